//! The startup phase: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.
//!
//! A StartupMessage is parsed once into a checked [`StartupMessage`]: the identity (user,
//! database, replication mode) typed, every parameter given at most once. The proxy
//! authenticates and records that identity, and the packet sent to a server is built from it
//! alone ([`StartupMessage::encode_for_server`]), never from the client's bytes. Postgres takes
//! the *last* of two `user` parameters: forwarding a repeated one would log the client in as a
//! role the proxy never authenticated.

use bytes::{BufMut, Bytes, BytesMut};

use super::messages::{self, take_cstr, Severity};

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 196_608;

/// Postgres truncates user and database names to NAMEDATALEN - 1 bytes.
const MAX_NAME_BYTES: usize = 63;

#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: u32, secret: Bytes },
    Startup(StartupMessage),
}

/// The `replication` startup parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    Off,
    /// `replication=true`: a physical walsender.
    Physical,
    /// `replication=database`: a logical walsender.
    Logical,
}

/// A checked StartupMessage.
#[derive(Debug, Clone)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    user: String,
    /// As the server will use it: the user name when the client gave none.
    database: String,
    replication: Replication,
    /// Everything else the server gets (settings, `options`), in the client's order.
    settings: Vec<(String, String)>,
    /// `_pq_.` protocol options; we support none of them.
    protocol_options: Vec<String>,
}

impl StartupMessage {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn replication(&self) -> Replication {
        self.replication
    }

    pub fn protocol_options(&self) -> &[String] {
        &self.protocol_options
    }

    /// A setting the client gave at startup (e.g. `application_name`).
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A plain 3.0 message for `user`, for unit tests elsewhere.
    #[cfg(test)]
    pub(crate) fn for_user(user: &str) -> Self {
        let (user, database) = (user.to_string(), user.to_string());
        StartupMessage { major: 3, minor: 0, user, database, replication: Replication::Off, settings: Vec::new(), protocol_options: Vec::new() }
    }

    /// The StartupMessage for a server (protocol 3.0): the user and database the proxy
    /// authenticated and recorded, then the settings. No `_pq_.` options, and no `replication`
    /// (only a non-replication session gets this far, and that is the server's default).
    pub fn encode_for_server(&self) -> Bytes {
        let mut payload = BytesMut::new();
        payload.put_u32(PROTOCOL_3_0);
        let identity = [("user", self.user.as_str()), ("database", self.database.as_str())];
        for (k, v) in identity.into_iter().chain(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            payload.put_slice(k.as_bytes());
            payload.put_u8(0);
            payload.put_slice(v.as_bytes());
            payload.put_u8(0);
        }
        payload.put_u8(0);
        messages::untagged(&payload)
    }
}

/// Why a startup packet was not accepted, and what Postgres answers to it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Not a startup packet (e.g. a cancel request of the wrong length): Postgres logs it and
    /// closes the connection without a reply.
    #[error("invalid startup packet: {0}")]
    Silent(&'static str),
    /// A protocol major version below 3: answered in the version-2 format, the only one such
    /// a client reads (no SQLSTATE on the wire; 0A000 in Postgres' log).
    #[error("{0}")]
    OldProtocol(String),
    #[error("{message}")]
    Refused { sqlstate: &'static str, message: String, hint: Option<&'static str> },
}

impl StartupError {
    fn refused(sqlstate: &'static str, message: impl Into<String>) -> Self {
        StartupError::Refused { sqlstate, message: message.into(), hint: None }
    }

    /// The bytes to send the client before closing, if any.
    pub fn reply(&self) -> Option<Bytes> {
        match self {
            StartupError::Silent(_) => None,
            StartupError::OldProtocol(message) => {
                let mut body = BytesMut::new();
                body.put_u8(b'E');
                body.put_slice(format!("FATAL:  {message}\n").as_bytes());
                body.put_u8(0);
                Some(body.freeze())
            }
            StartupError::Refused { sqlstate, message, hint } => Some(messages::error_response(Severity::Fatal, sqlstate, message, None, *hint)),
        }
    }
}

const LAYOUT: &str = "invalid startup packet layout: expected terminator as last byte";

/// Parses the payload of an untagged startup-phase packet (everything after the length).
pub fn parse_startup(payload: &Bytes) -> Result<StartupPacket, StartupError> {
    if payload.len() < 4 {
        return Err(StartupError::Silent("too short"));
    }
    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    match code {
        SSL_REQUEST if payload.len() == 4 => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST if payload.len() == 4 => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST if payload.len() >= 12 && payload.len() <= 4 + 4 + 256 => {
            let pid = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            Ok(StartupPacket::Cancel { pid, secret: payload.slice(8..) })
        }
        CANCEL_REQUEST => Err(StartupError::Silent("cancel request of the wrong length")),
        code if code >> 16 == 3 => parse_message((code & 0xffff) as u16, &payload[4..]).map(StartupPacket::Startup),
        code => {
            let message = format!("unsupported frontend protocol {}.{}: server supports 3.0 to 3.0", code >> 16, code & 0xffff);
            if code >> 16 < 3 {
                Err(StartupError::OldProtocol(message))
            } else {
                Err(StartupError::refused("0A000", message))
            }
        }
    }
}

fn parse_message(minor: u16, mut rest: &[u8]) -> Result<StartupMessage, StartupError> {
    let layout = || StartupError::refused("08P01", LAYOUT);
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (key, after) = take_cstr(rest).ok_or_else(layout)?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(layout());
            }
            break;
        }
        let (value, after) = take_cstr(after).ok_or_else(layout)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| StartupError::refused("08P01", "invalid startup packet: a parameter name is not valid UTF-8"))?;
        // Setting names are case-insensitive in Postgres: `TimeZone` and `timezone` are one.
        if let Some((first, _)) = params.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
            return Err(StartupError::refused("08P01", format!("invalid startup packet: parameter \"{first}\" given more than once")));
        }
        params.push((key, String::from_utf8_lossy(value).into_owned()));
        rest = after;
    }
    let mut user = String::new();
    let mut database = String::new();
    let mut replication = Replication::Off;
    let mut settings = Vec::new();
    let mut protocol_options = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "user" => user = truncate_name(value),
            "database" => database = truncate_name(value),
            "replication" => replication = parse_replication(&value)?,
            _ if key.starts_with("_pq_.") => protocol_options.push(key),
            _ => settings.push((key, value)),
        }
    }
    if user.is_empty() {
        return Err(StartupError::refused("28000", "no PostgreSQL user name specified in startup packet"));
    }
    if database.is_empty() {
        database = user.clone();
    }
    Ok(StartupMessage { major: 3, minor, user, database, replication, settings, protocol_options })
}

/// As Postgres: a boolean (any prefix of true/false/yes/no, on/off, 1/0, any case) or `database`.
fn parse_replication(value: &str) -> Result<Replication, StartupError> {
    if value == "database" {
        return Ok(Replication::Logical);
    }
    let lower = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| lower.len() >= min && word.starts_with(lower.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || lower == "1" {
        Ok(Replication::Physical)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || lower == "0" {
        Ok(Replication::Off)
    } else {
        Err(StartupError::Refused {
            sqlstate: "22023",
            message: format!("invalid value for parameter \"replication\": \"{value}\""),
            hint: Some("Valid values are: \"false\", 0, \"true\", 1, \"database\"."),
        })
    }
}

/// Postgres truncates user and database names longer than a name can be; the proxy does the
/// same up front, so the name it authenticates and records is the one the server uses.
fn truncate_name(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u32, params: &[(&str, &str)]) -> Bytes {
        crate::fuzz::startup_payload(code, params)
    }

    fn message(params: &[(&str, &str)]) -> Result<StartupMessage, StartupError> {
        match parse_startup(&payload(PROTOCOL_3_0, params))? {
            StartupPacket::Startup(m) => Ok(m),
            other => panic!("not a StartupMessage: {other:?}"),
        }
    }

    fn code(e: StartupError) -> &'static str {
        match e {
            StartupError::Refused { sqlstate, .. } => sqlstate,
            StartupError::OldProtocol(_) => "v2",
            StartupError::Silent(_) => "silent",
        }
    }

    /// The parameters of the server's StartupMessage, in order.
    fn sent(m: &StartupMessage) -> Vec<(String, String)> {
        crate::fuzz::packet_params(&m.encode_for_server())
    }

    #[test]
    fn parses_startup_and_defaults_database() {
        let p = payload(196_610, &[("user", "bob"), ("_pq_.x", "1")]);
        let StartupPacket::Startup(m) = parse_startup(&p).unwrap() else { panic!() };
        assert_eq!((m.minor, m.user(), m.database()), (2, "bob", "bob"));
        assert_eq!(m.protocol_options(), ["_pq_.x".to_string()]);
        assert_eq!(sent(&m), vec![("user".into(), "bob".into()), ("database".into(), "bob".into())]);
    }

    #[test]
    fn the_server_gets_the_checked_identity_and_settings_only() {
        let m = message(&[("application_name", "x"), ("database", "db"), ("replication", "off"), ("user", "app"), ("options", "-c a=b")]).unwrap();
        assert_eq!(m.replication(), Replication::Off);
        let expected: Vec<(String, String)> =
            [("user", "app"), ("database", "db"), ("application_name", "x"), ("options", "-c a=b")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(sent(&m), expected);
    }

    #[test]
    fn repeated_parameters_are_refused() {
        for params in [
            vec![("user", "app"), ("user", "postgres")],
            vec![("user", "app"), ("database", "a"), ("database", "b")],
            vec![("user", "app"), ("replication", "false"), ("replication", "database")],
            vec![("user", "app"), ("TimeZone", "UTC"), ("timezone", "CET")],
            vec![("user", "app"), ("user", "app")],
        ] {
            let err = message(&params).expect_err("duplicate accepted");
            assert!(err.to_string().contains("more than once"), "{params:?}: {err}");
            assert_eq!(code(err), "08P01", "{params:?}");
        }
    }

    #[test]
    fn replication_values_as_postgres_reads_them() {
        for (value, expected) in [
            ("database", Replication::Logical),
            ("true", Replication::Physical),
            ("T", Replication::Physical),
            ("yes", Replication::Physical),
            ("on", Replication::Physical),
            ("1", Replication::Physical),
            ("false", Replication::Off),
            ("fa", Replication::Off),
            ("No", Replication::Off),
            ("off", Replication::Off),
            ("0", Replication::Off),
        ] {
            assert_eq!(message(&[("user", "u"), ("replication", value)]).unwrap().replication(), expected, "{value}");
        }
        for bad in ["", "o", "database2", "truee", "2", "Database"] {
            assert_eq!(code(message(&[("user", "u"), ("replication", bad)]).expect_err(bad)), "22023", "{bad:?}");
        }
    }

    #[test]
    fn malformed_packets_get_postgres_answers() {
        assert_eq!(code(parse_startup(&Bytes::from_static(&[1, 2, 3])).unwrap_err()), "silent");
        assert_eq!(code(parse_startup(&Bytes::from_static(&[0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1])).unwrap_err()), "silent");
        assert_eq!(code(parse_startup(&payload(2 << 16, &[("user", "u")])).unwrap_err()), "v2");
        assert_eq!(code(parse_startup(&payload(1234, &[("user", "u")])).unwrap_err()), "v2");
        let four = parse_startup(&payload(4 << 16, &[("user", "u")])).unwrap_err();
        assert_eq!(four.to_string(), "unsupported frontend protocol 4.0: server supports 3.0 to 3.0");
        assert_eq!(code(four), "0A000");
        assert_eq!(code(message(&[("database", "x")]).unwrap_err()), "28000");
        assert_eq!(code(message(&[("user", "")]).unwrap_err()), "28000");
        let mut unterminated = payload(PROTOCOL_3_0, &[("user", "u")]).to_vec();
        unterminated.pop();
        assert_eq!(code(parse_startup(&Bytes::from(unterminated.clone())).unwrap_err()), "08P01");
        unterminated.extend_from_slice(b"\0\0extra");
        assert_eq!(code(parse_startup(&Bytes::from(unterminated)).unwrap_err()), "08P01");
        let v2 = StartupError::OldProtocol("x".into()).reply().unwrap();
        assert_eq!(&v2[..], b"EFATAL:  x\n\0");
    }

    #[test]
    fn long_names_are_truncated_as_postgres_does() {
        let long = "é".repeat(40);
        let m = message(&[("user", &long), ("database", &"d".repeat(70))]).unwrap();
        assert_eq!(m.user(), "é".repeat(31));
        assert_eq!(m.database(), "d".repeat(63));
        assert_eq!(sent(&m)[..2], [("user".to_string(), "é".repeat(31)), ("database".to_string(), "d".repeat(63))]);
    }
}
