package manifest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrBadSignature means no trusted key verifies the manifest bytes.
var ErrBadSignature = errors.New("manifest signature does not verify against any trusted key")

// Sign returns the signature file content for manifest bytes: base64 of the ed25519
// signature, one line, so it survives being pasted into a terminal or a ticket.
func Sign(key ed25519.PrivateKey, manifestBytes []byte) []byte {
	sig := ed25519.Sign(key, manifestBytes)
	return []byte(base64.StdEncoding.EncodeToString(sig) + "\n")
}

// TrustedKeys is the set of public keys whose signatures an agent or operator accepts.
type TrustedKeys []ed25519.PublicKey

// Verify checks sigFile (as written by Sign) over manifestBytes.
func (k TrustedKeys) Verify(manifestBytes, sigFile []byte) error {
	if len(k) == 0 {
		return errors.New("no trusted keys configured: pass the public key files written by `captain keygen`")
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sigFile)))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature file is not one base64 ed25519 signature", ErrBadSignature)
	}
	for _, pub := range k {
		if ed25519.Verify(pub, manifestBytes, sig) {
			return nil
		}
	}
	return ErrBadSignature
}

// VerifyAndParse checks the signature first and only then parses: untrusted bytes never
// reach the JSON decoder.
func (k TrustedKeys) VerifyAndParse(manifestBytes, sigFile []byte) (*Manifest, error) {
	if err := k.Verify(manifestBytes, sigFile); err != nil {
		return nil, err
	}
	return Parse(manifestBytes)
}

const (
	privatePEMType = "PRIVATE KEY"
	publicPEMType  = "PUBLIC KEY"
)

// GenerateKeyFiles writes a new ed25519 private key to privPath (mode 0600) and its public
// key to privPath+".pub". Both are PEM (PKCS#8 / PKIX) so standard tools can read them.
// Existing files are never overwritten: losing a signing key silently is worse than an error.
func GenerateKeyFiles(privPath string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: privatePEMType, Bytes: privDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(privPath+".pub", pem.EncodeToMemory(&pem.Block{Type: publicPEMType, Bytes: pubDER}), 0o644); err != nil {
		_ = os.Remove(privPath)
		return nil, err
	}
	return pub, nil
}

func writeNew(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists: refusing to overwrite a key; choose another path or remove it first", name)
		}
		return fmt.Errorf("create key file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return f.Close()
}

// LoadPrivateKey reads a private key written by GenerateKeyFiles.
func LoadPrivateKey(name string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != privatePEMType {
		return nil, fmt.Errorf("%s is not a PEM %q file written by `captain keygen`", name, privatePEMType)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse signing key %s: %w", name, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, want an ed25519 key", name, k)
	}
	return priv, nil
}

// ParsePublicKey decodes one PEM public key.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != publicPEMType {
		return nil, fmt.Errorf("not a PEM %q block written by `captain keygen`", publicPEMType)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("holds a %T, want an ed25519 key", k)
	}
	return pub, nil
}

// LoadTrustedKeys reads public key files (KEY.pub from `captain keygen`).
func LoadTrustedKeys(names ...string) (TrustedKeys, error) {
	keys := make(TrustedKeys, 0, len(names))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read trusted key: %w", err)
		}
		pub, err := ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("trusted key %s: %w", n, err)
		}
		keys = append(keys, pub)
	}
	return keys, nil
}
