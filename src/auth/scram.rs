//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL implements it.
//!
//! As a server, `SCRAM-SHA-256-PLUS` with `tls-server-end-point` channel
//! binding is offered when the caller supplies the hash of its TLS certificate
//! (see [`crate::auth::channel_binding`]); otherwise only `SCRAM-SHA-256`, and a
//! client asking for channel binding (`p=`) is refused. As a client, the proxy
//! never binds (it logs into servers with `n,,`), and it can answer from a
//! password or, without one, from a ClientKey recovered from a client's proof
//! (pass-through: no PBKDF2).
//!
//! Password normalisation: Postgres runs SASLprep (RFC 4013) on the password
//! and falls back to the raw bytes when SASLprep fails. For ASCII passwords
//! SASLprep is the identity, which is what we implement. Non-ASCII passwords
//! are used as raw UTF-8 bytes, which matches Postgres whenever SASLprep
//! leaves them unchanged or rejects them (e.g. prohibited characters); a
//! non-ASCII password that SASLprep would *rewrite* (NFKC, non-ASCII spaces)
//! produces a different verifier than Postgres would.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// SASL mechanism name to advertise in `AuthenticationSASL`.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The channel-binding variant, offered over TLS.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type Postgres (and so the proxy) supports.
const CBIND_TYPE: &[u8] = b"tls-server-end-point";
/// Postgres' default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Postgres' `SCRAM_DEFAULT_SALT_LEN`.
pub const DEFAULT_SALT_LEN: usize = 16;
/// Postgres' `SCRAM_RAW_NONCE_LEN`; base64 of 18 bytes is 24 chars, no padding.
const RAW_NONCE_LEN: usize = 18;
const KEY_LEN: usize = 32;

type Key = [u8; KEY_LEN];

/// base64("n,,"): the `c=` value of a client without channel binding.
const CBIND_N: &[u8] = b"biws";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client's channel-binding choice contradicts the mechanism it selected or what
    /// the server offered (a possible downgrade).
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBindingNegotiation(&'static str),
    /// Pass-through: the server's salt or iteration count is not the verifier's the
    /// ClientKey belongs to, so the server holds a different verifier for the role.
    #[error("the server's SCRAM salt or iteration count differs from the verifier pgcutover holds for the role")]
    VerifierMismatch,
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client proof did not verify: wrong password.
    #[error("SCRAM client proof is invalid (wrong password)")]
    InvalidProof,
    /// The server's `v=` did not verify: it does not know our password.
    #[error("SCRAM server signature is invalid")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<text>`.
    #[error("server rejected SCRAM authentication: {0}")]
    Server(String),
    #[error("SCRAM exchange step called out of order")]
    OutOfOrder,
}

// ---------------------------------------------------------------------------
// Primitives

/// SHA-256 output (and HMAC-SHA-256 tag) as a fixed array.
fn key_from(bytes: &[u8]) -> Key {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&bytes[..KEY_LEN]);
    out
}

fn hmac_sha256(key: &Key, parts: &[&[u8]]) -> Key {
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for p in parts {
        mac.update(p);
    }
    key_from(mac.sign().as_ref())
}

fn sha256_parts(parts: &[&[u8]]) -> Key {
    let mut h = digest::Context::new(&digest::SHA256);
    for p in parts {
        h.update(p);
    }
    key_from(h.finish().as_ref())
}

fn sha256(data: &[u8]) -> Key {
    sha256_parts(&[data])
}

/// See the module docs: identity for ASCII, raw UTF-8 otherwise.
fn normalize_password(password: &str) -> &[u8] {
    password.as_bytes()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; KEY_LEN];
    // Verifiers with 0 iterations are refused when parsed; 1 keeps this total.
    let rounds = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, normalize_password(password), &mut out);
    out
}

fn client_key_from_salted(salted: &Key) -> Key {
    hmac_sha256(salted, &[b"Client Key"])
}

fn server_key_from_salted(salted: &Key) -> Key {
    hmac_sha256(salted, &[b"Server Key"])
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn random_nonce() -> String {
    B64.encode(rand::random::<[u8; RAW_NONCE_LEN]>())
}

fn decode_key(b64: &str, what: &'static str) -> Result<Key, ScramError> {
    let v = B64
        .decode(b64)
        .map_err(|_| ScramError::InvalidVerifier(what))?;
    Key::try_from(v.as_slice()).map_err(|_| ScramError::InvalidVerifier(what))
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (visible ASCII except ',').
fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Value of `<name>=<value>`, or `None` if the attribute is missing/different.
fn attr(part: Option<&[u8]>, name: u8) -> Option<&[u8]> {
    match part? {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    }
}

fn split_comma(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut it = s.splitn(2, |&b| b == b',');
    Some((it.next()?, it.next()?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

// ---------------------------------------------------------------------------
// ClientKey

/// A role's SCRAM ClientKey, recovered from a client's proof. Password-equivalent for
/// logging into any server that holds the same verifier: zeroed on drop, never printed.
#[derive(Clone)]
pub struct ClientKey(Key);

impl ClientKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

// ---------------------------------------------------------------------------
// Verifier

/// A SCRAM-SHA-256 secret as stored in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl ScramVerifier {
    /// Parse the `rolpassword` format.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let mut parts = s.split('$');
        if parts.next() != Some(SCRAM_SHA_256) {
            return Err(ScramError::InvalidVerifier("missing SCRAM-SHA-256 prefix"));
        }
        let (iter_str, salt_b64) = parts
            .next()
            .and_then(|p| p.split_once(':'))
            .ok_or(ScramError::InvalidVerifier("expected <iterations>:<salt>"))?;
        let (stored_b64, server_b64) =
            parts
                .next()
                .and_then(|p| p.split_once(':'))
                .ok_or(ScramError::InvalidVerifier(
                    "expected <StoredKey>:<ServerKey>",
                ))?;
        if parts.next().is_some() {
            return Err(ScramError::InvalidVerifier("trailing data"));
        }
        let iterations = match iter_str.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return Err(ScramError::InvalidVerifier("invalid iteration count")),
        };
        let salt = B64
            .decode(salt_b64)
            .map_err(|_| ScramError::InvalidVerifier("invalid salt"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_b64, "invalid StoredKey")?,
            server_key: decode_key(server_b64, "invalid ServerKey")?,
        })
    }

    /// Derive the verifier Postgres would store for `password` with this salt
    /// and iteration count. Runs PBKDF2 (`iterations` HMACs): CPU-bound.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        // Postgres and libpq both refuse a zero iteration count.
        if iterations == 0 {
            return Err(ScramError::InvalidVerifier("invalid iteration count"));
        }
        let salted = salted_password(password, salt, iterations);
        Ok(ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key_from_salted(&salted)),
            server_key: server_key_from_salted(&salted),
        })
    }

    /// A verifier for a role that does not exist or has no usable secret, so that its
    /// exchange runs like any other and fails at the proof, as a wrong password does
    /// (Postgres' "mock" authentication). Salt and keys are derived from the name with a
    /// per-process secret: the same name always shows the same salt, different names
    /// different ones, as real roles do. No PBKDF2.
    pub fn decoy(user: &str) -> Self {
        static SECRET: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(rand::random);
        let salt = hmac_sha256(secret, &[b"salt\0", user.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: hmac_sha256(secret, &[b"stored\0", user.as_bytes()]),
            server_key: hmac_sha256(secret, &[b"server\0", user.as_bytes()]),
        }
    }

    /// New verifier with a random 16-byte salt and 4096 iterations (Postgres'
    /// defaults).
    pub fn generate(password: &str) -> Result<Self, ScramError> {
        Self::from_password(password, &rand::random::<[u8; DEFAULT_SALT_LEN]>(), DEFAULT_ITERATIONS)
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }
}

impl Drop for ScramVerifier {
    fn drop(&mut self) {
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

impl FromStr for ScramVerifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Renders the `rolpassword` format (inverse of [`ScramVerifier::parse`]).
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}${}:{}${}:{}",
            SCRAM_SHA_256,
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

// The keys are password-equivalent for impersonating the server (ServerKey)
// or, with a sniffed exchange, the client; keep them out of logs.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &B64.encode(&self.salt))
            .field("keys", &"<redacted>")
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Server side

enum ServerState {
    Initial,
    FirstSent {
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        /// Full nonce: client nonce + server suffix.
        nonce: Vec<u8>,
        /// Expected `c=` value: base64 of the gs2 header (plus the channel-binding data
        /// when the client binds).
        cbind: Vec<u8>,
    },
    Success {
        client_key: ClientKey,
    },
    Failed,
}

/// Server side of one SCRAM-SHA-256 exchange: authenticate a client against a
/// stored [`ScramVerifier`].
///
/// Usage: send `AuthenticationSASL` listing [`mechanisms`](Self::mechanisms);
/// feed the mechanism the client chose and its `SASLInitialResponse` data to
/// [`client_first_for`](Self::client_first_for) and send the result as
/// `AuthenticationSASLContinue`; feed the `SASLResponse` data to
/// [`client_final`](Self::client_final) and send the result as
/// `AuthenticationSASLFinal`, then `AuthenticationOk`. Any error is final: the
/// exchange cannot be resumed.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// `tls-server-end-point` data (the hash of our certificate) when the client
    /// connection uses TLS: then SCRAM-SHA-256-PLUS is offered.
    channel_binding: Option<Vec<u8>>,
    state: ServerState,
}

impl ScramServer {
    /// An exchange without channel binding (plain connection).
    pub fn new(verifier: ScramVerifier) -> Self {
        Self::with_channel_binding(verifier, None)
    }

    /// An exchange that offers SCRAM-SHA-256-PLUS when `end_point` (the
    /// `tls-server-end-point` hash of the certificate the client saw) is given.
    pub fn with_channel_binding(verifier: ScramVerifier, end_point: Option<Vec<u8>>) -> Self {
        ScramServer {
            verifier,
            channel_binding: end_point,
            state: ServerState::Initial,
        }
    }

    pub fn verifier(&self) -> &ScramVerifier {
        &self.verifier
    }

    /// The mechanisms to list in `AuthenticationSASL`, preferred first (as Postgres).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Process client-first-message for the plain mechanism, return
    /// server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.client_first_for(SCRAM_SHA_256.as_bytes(), msg)
    }

    /// Process client-first-message sent with the mechanism the client selected,
    /// return server-first-message.
    pub fn client_first_for(&mut self, mechanism: &[u8], msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.client_first_with_suffix(mechanism, msg, random_nonce().as_bytes())
    }

    /// `client_first_for` with a given server nonce suffix (tests reproduce the
    /// RFC 7677 vector through this).
    fn client_first_with_suffix(
        &mut self,
        mechanism: &[u8],
        msg: &[u8],
        suffix: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        // Any failure from here on leaves the exchange Failed.
        self.state = ServerState::Failed;

        let plus = if mechanism == SCRAM_SHA_256_PLUS.as_bytes() {
            if self.channel_binding.is_none() {
                return Err(ScramError::ChannelBindingNegotiation(
                    "SCRAM-SHA-256-PLUS was not offered",
                ));
            }
            true
        } else if mechanism == SCRAM_SHA_256.as_bytes() {
            false
        } else {
            return Err(ScramError::Unsupported("SASL mechanism"));
        };

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = split_comma(msg).ok_or(ScramError::Malformed("missing gs2 header"))?;
        // The channel-binding data the client must include in `c=` (after the header).
        let bound: &[u8] = match flag {
            b"n" | b"y" if plus => {
                return Err(ScramError::ChannelBindingNegotiation(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
                ))
            }
            b"n" => &[],
            // The client could bind but thinks we cannot: over TLS we offered -PLUS,
            // so someone removed it on the way (Postgres refuses this too).
            b"y" if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBindingNegotiation(
                    "the client supports SCRAM channel binding but thinks the server does not; this server does support channel binding",
                ))
            }
            b"y" => &[],
            f if f.starts_with(b"p=") => {
                if !plus {
                    return Err(ScramError::ChannelBindingNegotiation(
                        "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
                    ));
                }
                if &f[2..] != CBIND_TYPE {
                    return Err(ScramError::Unsupported("channel-binding type"));
                }
                self.channel_binding.as_deref().unwrap_or_default()
            }
            _ => return Err(ScramError::Malformed("invalid gs2 channel-binding flag")),
        };
        let (authzid, bare) =
            split_comma(rest).ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            // Postgres rejects authzid too: the role comes from the startup packet.
            return Err(if authzid.starts_with(b"a=") {
                ScramError::Unsupported("authorization identity")
            } else {
                ScramError::Malformed("invalid gs2 header")
            });
        }
        let header = &msg[..flag.len() + 2];
        let cbind = B64.encode(concat(&[header, bound])).into_bytes();

        let mut attrs = bare.split(|&b| b == b',');
        let user = attrs.next();
        if attr(user, b'm').is_some() {
            return Err(ScramError::Unsupported("mandatory SCRAM extension"));
        }
        // The username is ignored (libpq sends `n=`; the role is in the
        // startup packet), so no saslname validation.
        if attr(user, b'n').is_none() {
            return Err(ScramError::Malformed("expected username attribute"));
        }
        let client_nonce =
            attr(attrs.next(), b'r').ok_or(ScramError::Malformed("expected nonce attribute"))?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        // Remaining attributes are optional extensions; ignored, as Postgres does.

        let nonce = concat(&[client_nonce, suffix]);
        let salt_b64 = B64.encode(&self.verifier.salt);
        let iterations = self.verifier.iterations.to_string();
        let server_first = concat(&[
            b"r=",
            &nonce,
            b",s=",
            salt_b64.as_bytes(),
            b",i=",
            iterations.as_bytes(),
        ]);
        self.state = ServerState::FirstSent {
            client_first_bare: bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
            cbind,
        };
        Ok(server_first)
    }

    /// Process client-final-message, return server-final-message (`v=...`).
    /// A wrong password yields [`ScramError::InvalidProof`].
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        // Take the state by value; any failure below leaves it Failed.
        let state = std::mem::replace(&mut self.state, ServerState::Failed);
        let ServerState::FirstSent {
            client_first_bare,
            server_first,
            nonce,
            cbind,
        } = state
        else {
            // A misplaced call must not clobber a finished exchange.
            self.state = state;
            return Err(ScramError::OutOfOrder);
        };

        // client-final-message = without-proof "," "p=" proof. Attribute
        // values cannot contain ',', so the first ",p=" starts the proof;
        // optional extensions may precede it.
        let p = find(msg, b",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let (without_proof, proof_b64) = match (msg.get(..p), msg.get(p + 3..)) {
            (Some(w), Some(pr)) => (w, pr),
            _ => return Err(ScramError::Malformed("missing proof")),
        };
        if proof_b64.contains(&b',') {
            return Err(ScramError::Malformed("garbage after proof"));
        }

        let mut attrs = without_proof.split(|&b| b == b',');
        let c = attr(attrs.next(), b'c')
            .ok_or(ScramError::Malformed("expected channel-binding attribute"))?;
        if !bool::from(c.ct_eq(&cbind)) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let r =
            attr(attrs.next(), b'r').ok_or(ScramError::Malformed("expected nonce attribute"))?;
        if r != nonce.as_slice() {
            return Err(ScramError::NonceMismatch);
        }

        let proof = B64
            .decode(proof_b64)
            .map_err(|_| ScramError::Malformed("invalid base64 in proof"))?;
        let proof = Key::try_from(proof.as_slice())
            .map_err(|_| ScramError::Malformed("proof has wrong length"))?;

        let auth_message = concat(&[&client_first_bare, b",", &server_first, b",", without_proof]);
        let client_signature = hmac_sha256(&self.verifier.stored_key, &[&auth_message]);
        let client_key = ClientKey(xor(&proof, &client_signature));
        // Constant-time: don't leak how much of StoredKey a forged proof hit.
        if !bool::from(sha256(client_key.as_bytes()).ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::InvalidProof);
        }

        let server_signature = hmac_sha256(&self.verifier.server_key, &[&auth_message]);
        self.state = ServerState::Success { client_key };
        Ok(concat(&[b"v=", B64.encode(server_signature).as_bytes()]))
    }

    /// The client's ClientKey, recovered from its proof (ClientProof XOR
    /// ClientSignature), once the exchange has succeeded. Together with the
    /// verifier it can authenticate to another server holding the same verifier
    /// (see [`ScramClient::with_client_key`]).
    pub fn client_key(&self) -> Option<ClientKey> {
        match &self.state {
            ServerState::Success { client_key } => Some(client_key.clone()),
            _ => None,
        }
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::Initial => "Initial",
            ServerState::FirstSent { .. } => "FirstSent",
            ServerState::Success { .. } => "Success",
            ServerState::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("verifier", &self.verifier)
            .field("channel_binding", &self.channel_binding.is_some())
            .field("state", &state)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Client side

enum ClientState {
    Initial,
    FinalSent { server_signature: Key },
    Failed,
}

/// What the client side answers with.
enum ClientSecret {
    Password(zeroize::Zeroizing<String>),
    /// Pass-through: the role's ClientKey and the verifier it belongs to.
    Key {
        client_key: ClientKey,
        verifier: ScramVerifier,
    },
}

/// Client side of SCRAM-SHA-256, for logging in to an upstream Postgres with a
/// known password, or with a role's ClientKey and verifier (pass-through).
/// Always uses gs2 header `n,,` (no channel binding).
///
/// Usage: send [`client_first`](Self::client_first) in `SASLInitialResponse`
/// (mechanism [`SCRAM_SHA_256`]); pass the `AuthenticationSASLContinue` data to
/// [`server_first`](Self::server_first) and send the result as `SASLResponse`;
/// pass the `AuthenticationSASLFinal` data to
/// [`server_final`](Self::server_final). With a password, `server_first` runs
/// PBKDF2 with the server's iteration count (CPU-bound, cached); with a
/// ClientKey it only checks that the server's salt and iteration count are the
/// verifier's.
pub struct ScramClient {
    secret: ClientSecret,
    /// Empty in practice, as libpq sends; settable only for the RFC test vector.
    username: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    pub fn new(password: &str) -> Result<Self, ScramError> {
        Ok(Self::with_nonce("", password, random_nonce()))
    }

    /// Pass-through: answer with a ClientKey recovered by a [`ScramServer`] for
    /// `verifier`. The server must hold the same verifier.
    pub fn with_client_key(client_key: ClientKey, verifier: ScramVerifier) -> Self {
        ScramClient {
            secret: ClientSecret::Key { client_key, verifier },
            username: String::new(),
            nonce: random_nonce(),
            state: ClientState::Initial,
        }
    }

    fn with_nonce(username: &str, password: &str, nonce: String) -> Self {
        ScramClient {
            secret: ClientSecret::Password(zeroize::Zeroizing::new(password.to_owned())),
            username: username.to_owned(),
            nonce,
            state: ClientState::Initial,
        }
    }

    fn client_first_bare(&self) -> Vec<u8> {
        concat(&[
            b"n=",
            self.username.as_bytes(),
            b",r=",
            self.nonce.as_bytes(),
        ])
    }

    /// client-first-message: `n,,n=,r=<nonce>`.
    pub fn client_first(&self) -> Vec<u8> {
        concat(&[b"n,,", &self.client_first_bare()])
    }

    /// Process server-first-message, return client-final-message (with proof).
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        // Any failure from here on leaves the exchange Failed.
        self.state = ClientState::Failed;

        let mut attrs = msg.split(|&b| b == b',');
        let first = attrs.next();
        if attr(first, b'm').is_some() {
            return Err(ScramError::Unsupported("mandatory SCRAM extension"));
        }
        if let Some(e) = attr(first, b'e') {
            return Err(ScramError::Server(String::from_utf8_lossy(e).into_owned()));
        }
        let nonce = attr(first, b'r').ok_or(ScramError::Malformed("expected nonce attribute"))?;
        // The server must extend our nonce, not replace or merely echo it.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(self.nonce.as_bytes()) {
            return Err(ScramError::NonceMismatch);
        }
        if !is_printable(nonce) {
            return Err(ScramError::Malformed("invalid server nonce"));
        }
        let salt_b64 =
            attr(attrs.next(), b's').ok_or(ScramError::Malformed("expected salt attribute"))?;
        let salt = B64
            .decode(salt_b64)
            .map_err(|_| ScramError::Malformed("invalid base64 in salt"))?;
        let iter_str =
            attr(attrs.next(), b'i').ok_or(ScramError::Malformed("expected iteration count"))?;
        let iterations = match std::str::from_utf8(iter_str)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            Some(n) if n > 0 => n,
            _ => return Err(ScramError::Malformed("invalid iteration count")),
        };
        // Remaining attributes are optional extensions (RFC 5802); ignored.

        let (mut client_key, stored_key, server_key) = match &self.secret {
            ClientSecret::Password(password) => {
                let mut salted = cached_salted_password(password, &salt, iterations);
                let client_key = client_key_from_salted(&salted);
                let server_key = server_key_from_salted(&salted);
                salted.zeroize();
                (client_key, sha256(&client_key), server_key)
            }
            ClientSecret::Key { client_key, verifier } => {
                if salt != verifier.salt || iterations != verifier.iterations {
                    return Err(ScramError::VerifierMismatch);
                }
                (*client_key.as_bytes(), verifier.stored_key, verifier.server_key)
            }
        };

        let without_proof = concat(&[b"c=", CBIND_N, b",r=", nonce]);
        let auth_message = concat(&[&self.client_first_bare(), b",", msg, b",", &without_proof]);
        let client_signature = hmac_sha256(&stored_key, &[&auth_message]);
        let proof = xor(&client_key, &client_signature);
        client_key.zeroize();
        let server_signature = hmac_sha256(&server_key, &[&auth_message]);

        self.state = ClientState::FinalSent { server_signature };
        Ok(concat(&[
            &without_proof,
            b",p=",
            B64.encode(proof).as_bytes(),
        ]))
    }

    /// Verify server-final-message. `e=<text>` becomes [`ScramError::Server`];
    /// a wrong signature [`ScramError::InvalidServerSignature`].
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::FinalSent { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let first = msg.split(|&b| b == b',').next();
        if let Some(e) = attr(first, b'e') {
            return Err(ScramError::Server(String::from_utf8_lossy(e).into_owned()));
        }
        let v = attr(first, b'v').ok_or(ScramError::Malformed("expected verifier attribute"))?;
        let sig = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("invalid base64 in server signature"))?;
        // Extensions after `v=` are allowed by RFC 5802 and ignored.
        if bool::from(sig.as_slice().ct_eq(server_signature.as_slice())) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

/// PBKDF2 with 4096 rounds costs milliseconds of CPU, and a server's salt for a role does not
/// change: remember SaltedPassword per (password, salt, iterations) so that the proxy's many
/// logins to the same server (every client connection, every cutover pre-warm) pay it once.
/// Keys are hashes; the values are as sensitive as the passwords the proxy holds anyway and
/// never leave memory. Bounded to stay small.
fn cached_salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], [u8; 32]>>> = OnceLock::new();
    const MAX_ENTRIES: usize = 4096;
    let key = sha256_parts(&[password.as_bytes(), &[0], salt, &iterations.to_be_bytes()]);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
        return hit;
    }
    let salted = salted_password(password, salt, iterations);
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_ENTRIES {
            c.clear();
        }
        c.insert(key, salted);
    }
    salted
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "Initial",
            ClientState::FinalSent { .. } => "FinalSent",
            ClientState::Failed => "Failed",
        };
        let secret = match self.secret {
            ClientSecret::Password(_) => "password",
            ClientSecret::Key { .. } => "client key",
        };
        f.debug_struct("ScramClient")
            .field("secret", &secret)
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3 test vector.
    const RFC_SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_SUFFIX: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    // Computed independently with Python hashlib for "pencil" / RFC salt / 4096:
    //   sp = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    //   StoredKey = sha256(hmac(sp, b"Client Key")), ServerKey = hmac(sp, b"Server Key")
    const PENCIL_STORED_KEY: &str = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
    const PENCIL_SERVER_KEY: &str = "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    const PENCIL_CLIENT_KEY: &str = "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=";

    fn pencil_verifier_str() -> String {
        format!("SCRAM-SHA-256$4096:{RFC_SALT_B64}${PENCIL_STORED_KEY}:{PENCIL_SERVER_KEY}")
    }

    fn rfc_salt() -> Vec<u8> {
        B64.decode(RFC_SALT_B64).unwrap()
    }

    /// Run a full exchange; returns the server (for client_key) or the error.
    fn exchange(client_pw: &str, verifier: &ScramVerifier) -> Result<ScramServer, ScramError> {
        let mut client = ScramClient::new(client_pw)?;
        let mut server = ScramServer::new(verifier.clone());
        let first = client.client_first();
        assert!(first.starts_with(b"n,,n=,r="));
        let server_first = server.client_first(&first)?;
        let client_final = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        client.server_final(&server_final)?;
        Ok(server)
    }

    #[test]
    fn verifier_known_answer() {
        let v = ScramVerifier::from_password("pencil", &rfc_salt(), 4096).unwrap();
        assert_eq!(B64.encode(v.stored_key()), PENCIL_STORED_KEY);
        assert_eq!(B64.encode(v.server_key()), PENCIL_SERVER_KEY);
        assert_eq!(v.to_string(), pencil_verifier_str());
    }

    #[test]
    fn verifier_parse_round_trip() {
        let s = pencil_verifier_str();
        let parsed: ScramVerifier = s.parse().unwrap();
        assert_eq!(parsed.iterations(), 4096);
        assert_eq!(parsed.salt(), rfc_salt().as_slice());
        assert_eq!(
            parsed,
            ScramVerifier::from_password("pencil", &rfc_salt(), 4096).unwrap()
        );
        assert_eq!(parsed.to_string(), s);

        let g = ScramVerifier::generate("hunter2").unwrap();
        assert_eq!(g.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(g.salt().len(), DEFAULT_SALT_LEN);
        assert_eq!(ScramVerifier::parse(&g.to_string()).unwrap(), g);
        assert_eq!(
            g,
            ScramVerifier::from_password("hunter2", g.salt(), 4096).unwrap()
        );
        // Random salts differ.
        assert_ne!(g.salt(), ScramVerifier::generate("hunter2").unwrap().salt());
    }

    #[test]
    fn verifier_parse_rejects_garbage() {
        let good = pencil_verifier_str();
        let bad = [
            String::new(),
            "md553f48b7c4b76a86ce72276c5755f217d".to_owned(),
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
            good.replacen("4096", "0", 1),
            good.replacen("4096", "-1", 1),
            good.replacen("4096", "x", 1),
            good.replacen(':', ";", 1),
            good.replacen(PENCIL_STORED_KEY, "AAAA", 1), // wrong key length
            good.replacen(PENCIL_SERVER_KEY, "!!!", 1),  // not base64
            good.replacen(RFC_SALT_B64, "W22ZaJ0SNY7soEsUEjb6g", 1),
            format!("{good}$extra"),
        ];
        for s in bad {
            assert!(
                matches!(
                    ScramVerifier::parse(&s),
                    Err(ScramError::InvalidVerifier(_))
                ),
                "accepted {s:?}"
            );
        }
        assert!(ScramVerifier::from_password("x", b"salt", 0).is_err());
    }

    #[test]
    fn debug_redacts_keys() {
        let v = ScramVerifier::parse(&pencil_verifier_str()).unwrap();
        let d = format!("{v:?} {:?}", ScramServer::new(v.clone()));
        assert!(
            !d.contains(PENCIL_STORED_KEY) && !d.contains(PENCIL_SERVER_KEY),
            "{d}"
        );
        let c = ScramClient::new("pencil").unwrap();
        assert!(!format!("{c:?}").contains("pencil"));
    }

    #[test]
    fn rfc7677_server_side() {
        let v = ScramVerifier::parse(&pencil_verifier_str()).unwrap();
        let mut server = ScramServer::new(v);
        let sf = server
            .client_first_with_suffix(
                SCRAM_SHA_256.as_bytes(),
                RFC_CLIENT_FIRST.as_bytes(),
                RFC_SERVER_SUFFIX.as_bytes(),
            )
            .unwrap();
        assert_eq!(sf, RFC_SERVER_FIRST.as_bytes());
        let fin = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(fin, RFC_SERVER_FINAL.as_bytes());
        assert_eq!(
            B64.encode(server.client_key().unwrap().as_bytes()),
            PENCIL_CLIENT_KEY
        );
    }

    #[test]
    fn rfc7677_client_side() {
        let mut client = ScramClient::with_nonce("user", "pencil", RFC_CLIENT_NONCE.to_owned());
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let cf = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(cf, RFC_CLIENT_FINAL.as_bytes());
        client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
        // A different signature must be refused.
        let forged = "v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            client.server_final(forged.as_bytes()),
            Err(ScramError::InvalidServerSignature)
        );
    }

    #[test]
    fn full_exchange_right_password() {
        let v = ScramVerifier::generate("correct horse").unwrap();
        let server = exchange("correct horse", &v).unwrap();
        // ClientKey recovered by the server is the one derived from the password.
        let salted = salted_password("correct horse", v.salt(), v.iterations());
        let key = server.client_key().unwrap();
        assert_eq!(*key.as_bytes(), client_key_from_salted(&salted));
        assert_eq!(sha256(key.as_bytes()), *v.stored_key());
    }

    #[test]
    fn full_exchange_wrong_password() {
        let v = ScramVerifier::generate("correct horse").unwrap();
        assert_eq!(
            exchange("battery staple", &v).unwrap_err(),
            ScramError::InvalidProof
        );
        assert_eq!(exchange("", &v).unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn non_ascii_password_is_raw_utf8() {
        let v = ScramVerifier::generate("pässwörd").unwrap();
        exchange("pässwörd", &v).unwrap();
        assert_eq!(
            exchange("passwort", &v).unwrap_err(),
            ScramError::InvalidProof
        );
    }

    #[test]
    fn server_failure_is_final() {
        let v = ScramVerifier::generate("pw").unwrap();
        let mut server = ScramServer::new(v.clone());
        let mut client = ScramClient::new("nope").unwrap();
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        assert_eq!(server.client_final(&cf), Err(ScramError::InvalidProof));
        assert!(server.client_key().is_none());
        assert_eq!(server.client_final(&cf), Err(ScramError::OutOfOrder));
        assert_eq!(
            server.client_first(b"n,,n=,r=abc"),
            Err(ScramError::OutOfOrder)
        );

        let mut fresh = ScramServer::new(v.clone());
        assert_eq!(
            fresh.client_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::OutOfOrder)
        );

        // Out-of-order calls after success keep the recovered ClientKey.
        let mut ok = exchange("pw", &v).unwrap();
        let key = *ok.client_key().unwrap().as_bytes();
        assert_eq!(ok.client_first(b"n,,n=,r=abc"), Err(ScramError::OutOfOrder));
        assert_eq!(
            ok.client_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::OutOfOrder)
        );
        assert_eq!(*ok.client_key().unwrap().as_bytes(), key);
    }

    #[test]
    fn server_gs2_header_handling() {
        let v = ScramVerifier::parse(&pencil_verifier_str()).unwrap();
        let first = |msg: &str| ScramServer::new(v.clone()).client_first(msg.as_bytes());

        assert!(first("n,,n=,r=abc").is_ok());
        assert!(first("y,,n=,r=abc").is_ok());
        assert!(first("n,,n=someone,r=abc,x=ext").is_ok());
        assert!(matches!(
            first("p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBindingNegotiation(_))
        ));
        assert!(matches!(
            first("n,a=bob,n=,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
        assert!(matches!(
            first("n,,m=ext,n=,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
        for bad in [
            "",
            "n",
            "n,",
            "x,,n=,r=abc",
            "n,bob,n=,r=abc",
            "n,,r=abc",
            "n,,n=",
            "n,,n=,r=",
            "n,,n=,x=abc",
        ] {
            assert!(
                matches!(first(bad), Err(ScramError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
        // Non-printable nonce.
        assert!(matches!(
            first("n,,n=,r=a\x01b"),
            Err(ScramError::Malformed(_))
        ));

        // Server nonce = client nonce + 24 base64 chars (18 random bytes).
        let sf = first("n,,n=,r=abc").unwrap();
        let sf = std::str::from_utf8(&sf).unwrap();
        let nonce = sf.strip_prefix("r=").unwrap().split(',').next().unwrap();
        assert!(nonce.starts_with("abc"));
        assert_eq!(B64.decode(&nonce[3..]).unwrap().len(), RAW_NONCE_LEN);
        assert!(sf.ends_with(&format!(",s={RFC_SALT_B64},i=4096")));
    }

    /// Drive the server to FirstSent with the RFC messages, then feed `final_msg`.
    fn rfc_final(gs2: &str, final_msg: &str) -> Result<Vec<u8>, ScramError> {
        let v = ScramVerifier::parse(&pencil_verifier_str()).unwrap();
        let mut server = ScramServer::new(v);
        let first = format!("{gs2}n=user,r={RFC_CLIENT_NONCE}");
        server.client_first_with_suffix(
            SCRAM_SHA_256.as_bytes(),
            first.as_bytes(),
            RFC_SERVER_SUFFIX.as_bytes(),
        )?;
        server.client_final(final_msg.as_bytes())
    }

    #[test]
    fn server_client_final_checks() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_SUFFIX}");
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert!(rfc_final("n,,", RFC_CLIENT_FINAL).is_ok());

        // Channel-binding echo must match the gs2 header used.
        assert_eq!(
            rfc_final("y,,", RFC_CLIENT_FINAL),
            Err(ScramError::ChannelBindingMismatch)
        );
        assert_eq!(
            rfc_final("n,,", &format!("c=eSws,r={nonce},{proof}")),
            Err(ScramError::ChannelBindingMismatch)
        );
        // With y,, the echo is eSws; the proof then differs (AuthMessage
        // changed), so the RFC proof no longer verifies.
        assert_eq!(
            rfc_final("y,,", &format!("c=eSws,r={nonce},{proof}")),
            Err(ScramError::InvalidProof)
        );

        assert_eq!(
            rfc_final("n,,", &format!("c=biws,r={RFC_CLIENT_NONCE},{proof}")),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            rfc_final("n,,", &format!("c=biws,r={nonce}X,{proof}")),
            Err(ScramError::NonceMismatch)
        );
        // Extensions before the proof are part of AuthMessage: proof fails, not parsing.
        assert_eq!(
            rfc_final("n,,", &format!("c=biws,r={nonce},x=1,{proof}")),
            Err(ScramError::InvalidProof)
        );
        // Flip one proof bit.
        assert_eq!(
            rfc_final(
                "n,,",
                &format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=")
            ),
            Err(ScramError::InvalidProof)
        );
        for bad in [
            format!("c=biws,r={nonce}"),
            format!("r={nonce},{proof}"),
            format!("c=biws,{proof}"),
            format!("c=biws,r={nonce},p=!!!!"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("{RFC_CLIENT_FINAL},x=1"),
        ] {
            assert!(
                matches!(rfc_final("n,,", &bad), Err(ScramError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn client_server_first_checks() {
        let run = |msg: &str| {
            let mut c = ScramClient::with_nonce("", "pencil", RFC_CLIENT_NONCE.to_owned());
            c.server_first(msg.as_bytes())
        };
        assert!(run(RFC_SERVER_FIRST).is_ok());
        assert!(run(&format!("{RFC_SERVER_FIRST},x=ext")).is_ok());
        // Nonce not extended / not ours.
        assert_eq!(
            run(&format!("r={RFC_CLIENT_NONCE},s={RFC_SALT_B64},i=4096")),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            run(&format!("r=XXX{RFC_SERVER_SUFFIX},s={RFC_SALT_B64},i=4096")),
            Err(ScramError::NonceMismatch)
        );
        assert!(matches!(
            run(&format!("m=x,{RFC_SERVER_FIRST}")),
            Err(ScramError::Unsupported(_))
        ));
        assert_eq!(
            run("e=other-error"),
            Err(ScramError::Server("other-error".to_owned()))
        );
        let n = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_SUFFIX}");
        for bad in [
            format!("r={n},s=!!!,i=4096"),
            format!("r={n},s={RFC_SALT_B64},i=0"),
            format!("r={n},s={RFC_SALT_B64},i=-5"),
            format!("r={n},s={RFC_SALT_B64},i=4096x"),
            format!("r={n},s={RFC_SALT_B64}"),
            format!("r={n},i=4096"),
            format!("s={RFC_SALT_B64},i=4096"),
            format!("r={n}\x7f,s={RFC_SALT_B64},i=4096"),
        ] {
            assert!(
                matches!(run(&bad), Err(ScramError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn client_state_and_server_error() {
        let mut c = ScramClient::with_nonce("", "pencil", RFC_CLIENT_NONCE.to_owned());
        assert_eq!(
            c.server_final(RFC_SERVER_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        c.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            c.server_first(RFC_SERVER_FIRST.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        assert_eq!(
            c.server_final(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".to_owned()))
        );
        assert!(matches!(
            c.server_final(b"x=1"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(
            c.server_final(b"v=!!"),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn client_nonce_is_random_base64() {
        let a = ScramClient::new("pw").unwrap().client_first();
        let b = ScramClient::new("pw").unwrap().client_first();
        assert_ne!(a, b);
        let a = std::str::from_utf8(&a).unwrap();
        let nonce = a.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(B64.decode(nonce).unwrap().len(), RAW_NONCE_LEN);
    }

    /// A client that binds to `end_point` with the -PLUS mechanism, by hand (the
    /// proxy's own client never binds).
    fn plus_exchange(
        server: &mut ScramServer,
        password: &str,
        gs2: &str,
        mechanism: &str,
        cbind_data: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let v = server.verifier().clone();
        let nonce = "fyko+d2lbbFgONRv9qkxdawL";
        let bare = format!("n=,r={nonce}");
        let first = format!("{gs2}{bare}");
        let sf = server.client_first_for(mechanism.as_bytes(), first.as_bytes())?;
        let sf_text = std::str::from_utf8(&sf).unwrap();
        let full_nonce = sf_text.strip_prefix("r=").unwrap().split(',').next().unwrap();
        let c = B64.encode(concat(&[gs2.as_bytes(), cbind_data]));
        let without_proof = format!("c={c},r={full_nonce}");
        let auth_message = format!("{bare},{sf_text},{without_proof}");
        let salted = salted_password(password, v.salt(), v.iterations());
        let client_key = client_key_from_salted(&salted);
        let signature = hmac_sha256(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = B64.encode(xor(&client_key, &signature));
        server.client_final(format!("{without_proof},p={proof}").as_bytes())
    }

    #[test]
    fn channel_binding_plus() {
        let v = ScramVerifier::generate("pw").unwrap();
        let end_point = vec![7u8; 32];
        let gs2 = "p=tls-server-end-point,,";
        let server = || ScramServer::with_channel_binding(v.clone(), Some(end_point.clone()));
        assert_eq!(server().mechanisms(), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(ScramServer::new(v.clone()).mechanisms(), &[SCRAM_SHA_256]);

        // Right certificate hash: success, and the ClientKey is recovered as usual.
        let mut ok = server();
        plus_exchange(&mut ok, "pw", gs2, SCRAM_SHA_256_PLUS, &end_point).unwrap();
        assert_eq!(sha256(ok.client_key().unwrap().as_bytes()), *v.stored_key());
        // Another certificate (a man in the middle): refused before the proof counts.
        let mut other = server();
        assert_eq!(
            plus_exchange(&mut other, "pw", gs2, SCRAM_SHA_256_PLUS, &[8u8; 32]),
            Err(ScramError::ChannelBindingMismatch)
        );
        // Binding but the plain mechanism, or -PLUS without binding, or "y" while we
        // offered -PLUS (a downgrade): negotiation errors.
        for (gs2, mechanism) in [
            (gs2, SCRAM_SHA_256),
            ("n,,", SCRAM_SHA_256_PLUS),
            ("y,,", SCRAM_SHA_256_PLUS),
            ("y,,", SCRAM_SHA_256),
        ] {
            assert!(
                matches!(
                    plus_exchange(&mut server(), "pw", gs2, mechanism, &end_point),
                    Err(ScramError::ChannelBindingNegotiation(_))
                ),
                "{gs2} {mechanism}"
            );
        }
        // -PLUS when it was not offered; an unknown binding type.
        assert!(matches!(
            plus_exchange(&mut ScramServer::new(v.clone()), "pw", gs2, SCRAM_SHA_256_PLUS, &end_point),
            Err(ScramError::ChannelBindingNegotiation(_))
        ));
        assert!(matches!(
            plus_exchange(&mut server(), "pw", "p=tls-unique,,", SCRAM_SHA_256_PLUS, &end_point),
            Err(ScramError::Unsupported(_))
        ));
        // The plain mechanism without binding still works over TLS.
        let mut plain = server();
        plus_exchange(&mut plain, "pw", "n,,", SCRAM_SHA_256, &[]).unwrap();
        // Wrong password with the right binding: the proof fails.
        assert_eq!(
            plus_exchange(&mut server(), "nope", gs2, SCRAM_SHA_256_PLUS, &end_point),
            Err(ScramError::InvalidProof)
        );
    }

    /// Pass-through: the ClientKey a proxy recovers logs into another server holding
    /// the same verifier, and is refused (before any proof is sent) by one with another.
    #[test]
    fn client_key_pass_through() {
        let v = ScramVerifier::generate("secret").unwrap();
        let front = exchange("secret", &v).unwrap();
        let key = front.client_key().unwrap();

        let mut upstream = ScramServer::new(v.clone());
        let mut client = ScramClient::with_client_key(key.clone(), v.clone());
        let sf = upstream.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        let fin = upstream.client_final(&cf).unwrap();
        client.server_final(&fin).unwrap();
        assert_eq!(upstream.client_key().unwrap().as_bytes(), key.as_bytes());

        // Same password, another salt: the verifier differs on that server.
        let elsewhere = ScramVerifier::generate("secret").unwrap();
        let mut upstream = ScramServer::new(elsewhere);
        let mut client = ScramClient::with_client_key(key.clone(), v.clone());
        let sf = upstream.client_first(&client.client_first()).unwrap();
        assert_eq!(client.server_first(&sf), Err(ScramError::VerifierMismatch));

        // Same salt and iterations, other keys (another password): the server's
        // signature does not verify.
        let impostor = ScramVerifier::from_password("other", v.salt(), v.iterations()).unwrap();
        let mut upstream = ScramServer::new(impostor);
        let mut client = ScramClient::with_client_key(key.clone(), v.clone());
        let sf = upstream.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        assert_eq!(upstream.client_final(&cf), Err(ScramError::InvalidProof));

        let shown = format!("{key:?} {:?}", ScramClient::with_client_key(key.clone(), v));
        assert!(!shown.contains(&B64.encode(key.as_bytes())), "{shown}");
    }

    #[test]
    fn decoy_is_stable_per_name_and_fails_at_the_proof() {
        let a = ScramVerifier::decoy("ghost");
        assert_eq!(a, ScramVerifier::decoy("ghost"));
        assert_ne!(a.salt(), ScramVerifier::decoy("ghost2").salt());
        assert_eq!(a.salt().len(), DEFAULT_SALT_LEN);
        assert_eq!(a.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(exchange("anything", &a).unwrap_err(), ScramError::InvalidProof);
    }
}
