package pgfront

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Secret is a role's stored password secret as read by the auth query:
// either a SCRAM-SHA-256 verifier or an md5 hash. It holds no password;
// what it does hold (StoredKey, ServerKey, the md5 hash) is still
// sensitive and never logged.
type Secret struct {
	// SCRAM-SHA-256: "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
	Iterations int
	Salt       []byte
	StoredKey  []byte
	ServerKey  []byte
	// md5: "md5" + hex(md5(password + username)).
	MD5 string
}

// IsSCRAM reports whether the secret is a SCRAM-SHA-256 verifier.
func (s Secret) IsSCRAM() bool { return s.StoredKey != nil }

// errBadSecret: the auth query returned something that is neither a SCRAM
// verifier nor an md5 hash (a plaintext password, or NULL).
var errBadSecret = errors.New("pgfront: role secret is neither SCRAM-SHA-256 nor md5")

// ParseSecret parses a pg_authid.rolpassword value.
func ParseSecret(s string) (Secret, error) {
	if strings.HasPrefix(s, "md5") && len(s) == 35 {
		if _, err := hex.DecodeString(s[3:]); err == nil {
			return Secret{MD5: s}, nil
		}
	}
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return Secret{}, errBadSecret
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return Secret{}, errBadSecret
	}
	iterStr, saltStr, ok1 := strings.Cut(iterSalt, ":")
	storedStr, serverStr, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return Secret{}, errBadSecret
	}
	var sec Secret
	var err error
	if sec.Iterations, err = strconv.Atoi(iterStr); err != nil || sec.Iterations <= 0 {
		return Secret{}, errBadSecret
	}
	if sec.Salt, err = base64.StdEncoding.DecodeString(saltStr); err != nil {
		return Secret{}, errBadSecret
	}
	if sec.StoredKey, err = base64.StdEncoding.DecodeString(storedStr); err != nil || len(sec.StoredKey) != sha256.Size {
		return Secret{}, errBadSecret
	}
	if sec.ServerKey, err = base64.StdEncoding.DecodeString(serverStr); err != nil || len(sec.ServerKey) != sha256.Size {
		return Secret{}, errBadSecret
	}
	return sec, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

func randomNonce() string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.StdEncoding.EncodeToString(b)
}

// errSCRAMProtocol: the peer's SCRAM message is malformed.
var errSCRAMProtocol = errors.New("pgfront: malformed SCRAM message")

// scramServer runs the server side of SCRAM-SHA-256 (RFC 5802/7677) for
// one client login, as PostgreSQL's auth-scram.c does: no channel binding
// is offered (the mechanism list holds only SCRAM-SHA-256), the user name
// in the client-first message is ignored (the startup packet names the
// role). A missing or unknown role runs the exchange against a mock
// verifier so the client learns nothing before its proof fails.
type scramServer struct {
	secret          Secret
	clientFirstBare string
	serverFirst     string
	nonce           string
	clientKey       []byte // derived from the proof once verified
}

// mockSecret is a verifier no proof matches, used for unknown roles.
func mockSecret() Secret {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	stored := make([]byte, sha256.Size)
	_, _ = rand.Read(stored)
	return Secret{Iterations: 4096, Salt: salt, StoredKey: stored, ServerKey: stored}
}

// first consumes the client-first-message and returns the server-first-message.
func (s *scramServer) first(clientFirst string) (string, error) {
	// gs2-header: "n,," or "y,," (client supports binding, server offers none).
	var rest string
	switch {
	case strings.HasPrefix(clientFirst, "n,"), strings.HasPrefix(clientFirst, "y,"):
		rest = clientFirst[2:]
	default:
		return "", errSCRAMProtocol // "p=": channel binding we never offered
	}
	_, bare, ok := strings.Cut(rest, ",") // authzid, unused
	if !ok {
		return "", errSCRAMProtocol
	}
	var cnonce string
	for _, attr := range strings.Split(bare, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			cnonce = v
		}
	}
	if cnonce == "" || strings.ContainsAny(cnonce, ", ") {
		return "", errSCRAMProtocol
	}
	s.clientFirstBare = bare
	s.nonce = cnonce + randomNonce()
	s.serverFirst = "r=" + s.nonce + ",s=" + base64.StdEncoding.EncodeToString(s.secret.Salt) + ",i=" + strconv.Itoa(s.secret.Iterations)
	return s.serverFirst, nil
}

// final consumes the client-final-message. It returns the
// server-final-message and true when the proof is right; then clientKey
// holds the client's ClientKey (ClientProof XOR ClientSignature), which is
// what lets the proxy log in upstream as the same role.
func (s *scramServer) final(clientFinal string) (string, bool, error) {
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return "", false, errSCRAMProtocol
	}
	withoutProof := clientFinal[:i]
	proof, err := base64.StdEncoding.DecodeString(clientFinal[i+3:])
	if err != nil {
		return "", false, errSCRAMProtocol
	}
	var nonce, cbind string
	for _, attr := range strings.Split(withoutProof, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			nonce = v
		} else if v, ok := strings.CutPrefix(attr, "c="); ok {
			cbind = v
		}
	}
	if nonce != s.nonce || (cbind != "biws" && cbind != "eSws") { // "n,," or "y,," base64
		return "", false, errSCRAMProtocol
	}
	if len(proof) != sha256.Size {
		return "", false, nil
	}
	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	clientSig := hmacSHA256(s.secret.StoredKey, authMessage)
	clientKey := xorBytes(proof, clientSig)
	stored := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(stored[:], s.secret.StoredKey) != 1 {
		return "", false, nil
	}
	s.clientKey = clientKey
	serverSig := hmacSHA256(s.secret.ServerKey, authMessage)
	return "v=" + base64.StdEncoding.EncodeToString(serverSig), true, nil
}

// scramClient runs the client side of SCRAM-SHA-256 towards a backend
// with a ClientKey instead of a password: the proof needs only ClientKey
// and StoredKey = H(ClientKey); ServerKey from the verifier checks the
// backend's signature, so a proxy that reached the wrong server notices.
type scramClient struct {
	clientKey       []byte
	serverKey       []byte // may be nil: the server signature is then not checked
	nonce           string
	clientFirstBare string
	authMessage     string
}

func (c *scramClient) first() string {
	c.nonce = randomNonce()
	c.clientFirstBare = "n=,r=" + c.nonce
	return "n,," + c.clientFirstBare
}

// final answers the server-first-message with the client-final-message.
func (c *scramClient) final(serverFirst string) (string, error) {
	var nonce, salt string
	iter := 0
	for _, attr := range strings.Split(serverFirst, ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			salt = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iter, _ = strconv.Atoi(attr[2:])
		}
	}
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) || salt == "" || iter <= 0 {
		return "", errSCRAMProtocol
	}
	withoutProof := "c=biws,r=" + nonce
	c.authMessage = c.clientFirstBare + "," + serverFirst + "," + withoutProof
	stored := sha256.Sum256(c.clientKey)
	proof := xorBytes(c.clientKey, hmacSHA256(stored[:], c.authMessage))
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

// verify checks the server-final-message.
func (c *scramClient) verify(serverFinal string) error {
	v, ok := strings.CutPrefix(serverFinal, "v=")
	if !ok {
		return fmt.Errorf("pgfront: backend SCRAM final message: %w", errSCRAMProtocol)
	}
	if c.serverKey == nil {
		return nil
	}
	sig, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(sig, hmacSHA256(c.serverKey, c.authMessage)) {
		return errors.New("pgfront: backend SCRAM server signature does not match the role's verifier")
	}
	return nil
}

// md5Response is PostgreSQL's md5 password response for a stored md5
// secret ("md5" + hex(md5(password+user))) and a 4-byte salt: the server
// computes the same from the same secret, which is why the proxy can both
// check a client and log in upstream holding only the secret.
func md5Response(secret string, salt [4]byte) string {
	h := md5.New()
	h.Write([]byte(secret[3:]))
	h.Write(salt[:])
	return "md5" + hex.EncodeToString(h.Sum(nil))
}
