package pgfront

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
)

// verifierFor builds a PostgreSQL SCRAM-SHA-256 verifier the way
// PostgreSQL does, and the ClientKey a client with password derives.
func verifierFor(t *testing.T, password string) (string, []byte) {
	t.Helper()
	salt := []byte("0123456789abcdef")
	iter := 4096
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	serverKey := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iter) + ":" + b64(salt) + "$" + b64(stored[:]) + ":" + b64(serverKey), clientKey
}

// passwordProof is what a password-holding client (libpq) sends.
func passwordProof(t *testing.T, password, clientFirstBare, serverFirst, withoutProof string) string {
	t.Helper()
	var salt []byte
	iter := 0
	for _, a := range strings.Split(serverFirst, ",") {
		if v, ok := strings.CutPrefix(a, "s="); ok {
			salt, _ = base64.StdEncoding.DecodeString(v)
		}
		if v, ok := strings.CutPrefix(a, "i="); ok {
			iter, _ = strconv.Atoi(v)
		}
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sha256.New, salted)
	h.Write([]byte("Client Key"))
	clientKey := h.Sum(nil)
	stored := sha256.Sum256(clientKey)
	sig := hmacSHA256(stored[:], clientFirstBare+","+serverFirst+","+withoutProof)
	return base64.StdEncoding.EncodeToString(xorBytes(clientKey, sig))
}

func TestSCRAMServerDerivesClientKey(t *testing.T) {
	verifier, wantKey := verifierFor(t, "s3cret")
	sec, err := ParseSecret(verifier)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		password string
		ok       bool
	}{{"s3cret", true}, {"wrong", false}} {
		srv := &scramServer{secret: sec}
		bare := "n=,r=clientnonce"
		serverFirst, err := srv.first("n,," + bare)
		if err != nil {
			t.Fatal(err)
		}
		nonce := strings.TrimPrefix(strings.Split(serverFirst, ",")[0], "r=")
		if !strings.HasPrefix(nonce, "clientnonce") || nonce == "clientnonce" {
			t.Fatalf("server nonce %q does not extend the client's", nonce)
		}
		withoutProof := "c=biws,r=" + nonce
		final, ok, err := srv.final(withoutProof + ",p=" + passwordProof(t, tc.password, bare, serverFirst, withoutProof))
		if err != nil || ok != tc.ok {
			t.Fatalf("password %q: ok=%v err=%v", tc.password, ok, err)
		}
		if tc.ok {
			if !bytes.Equal(srv.clientKey, wantKey) {
				t.Fatal("derived ClientKey differs from the password's")
			}
			if !strings.HasPrefix(final, "v=") {
				t.Fatalf("server final %q", final)
			}
		}
	}
}

func TestSCRAMClientWithClientKey(t *testing.T) {
	verifier, clientKey := verifierFor(t, "s3cret")
	sec, _ := ParseSecret(verifier)
	// The proxy's client side against a server side holding the verifier.
	srv := &scramServer{secret: sec}
	cl := &scramClient{clientKey: clientKey, serverKey: sec.ServerKey}
	serverFirst, err := srv.first(cl.first())
	if err != nil {
		t.Fatal(err)
	}
	clientFinal, err := cl.final(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	serverFinal, ok, err := srv.final(clientFinal)
	if err != nil || !ok {
		t.Fatalf("server rejected the ClientKey login: ok=%v err=%v", ok, err)
	}
	if err := cl.verify(serverFinal); err != nil {
		t.Fatal(err)
	}
	if err := cl.verify("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32))); err == nil {
		t.Fatal("forged server signature accepted")
	}
	// A nonce the server did not extend is refused.
	cl2 := &scramClient{clientKey: clientKey}
	cl2.first()
	if _, err := cl2.final("r=other,s=c2FsdA==,i=4096"); err == nil {
		t.Fatal("foreign nonce accepted")
	}
}

func TestSCRAMServerRejectsMalformed(t *testing.T) {
	sec := mockSecret()
	for _, first := range []string{"", "p=tls-server-end-point,,n=,r=x", "n,,n=", "n,", "x,,n=,r=a"} {
		if _, err := (&scramServer{secret: sec}).first(first); err == nil {
			t.Errorf("client-first %q accepted", first)
		}
	}
	srv := &scramServer{secret: sec}
	if _, err := srv.first("n,,n=,r=abc"); err != nil {
		t.Fatal(err)
	}
	for _, final := range []string{"", "c=biws,r=wrong,p=AAAA", "c=biws,r=" + srv.nonce + ",p=!!", "c=xx,r=" + srv.nonce + ",p=AAAA"} {
		if _, ok, err := srv.final(final); err == nil && ok {
			t.Errorf("client-final %q accepted", final)
		}
	}
}

func TestParseSecret(t *testing.T) {
	v, _ := verifierFor(t, "x")
	if s, err := ParseSecret(v); err != nil || !s.IsSCRAM() || s.Iterations != 4096 {
		t.Errorf("SCRAM verifier: %+v %v", s, err)
	}
	if s, err := ParseSecret("md5" + strings.Repeat("ab", 16)); err != nil || s.MD5 == "" {
		t.Errorf("md5 secret: %+v %v", s, err)
	}
	for _, bad := range []string{"", "plaintext", "md5xyz", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA", "SCRAM-SHA-256$4096:AAAA$AAAA"} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) accepted", bad)
		}
	}
}

func TestMD5Response(t *testing.T) {
	// PostgreSQL: "md5" + md5(md5(password || user) || salt).
	secret := "md5" + "c27b8f3b58ba4f2e6b3c3a0b7b0e8b34"
	a := md5Response(secret, [4]byte{1, 2, 3, 4})
	b := md5Response(secret, [4]byte{1, 2, 3, 5})
	if !strings.HasPrefix(a, "md5") || len(a) != 35 || a == b {
		t.Fatalf("md5 responses %q %q", a, b)
	}
}
