//! The startup phase: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.

use bytes::{BufMut, Bytes, BytesMut};

use super::messages::take_cstr;
use super::ProtocolError;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 196_608;

#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: u32, secret: Bytes },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and parameters in the order the client sent them.
#[derive(Debug, Clone)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or("")
    }

    /// The database, defaulting to the user name as Postgres does.
    pub fn database(&self) -> &str {
        self.get("database").filter(|d| !d.is_empty()).unwrap_or_else(|| self.user())
    }

    /// `_pq_.` protocol options; we support none of them.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect()
    }

    /// Parameters to send to a server: everything but the `_pq_.` options, protocol 3.0.
    pub fn encode_for_server(&self, extra: &[(&str, &str)]) -> Bytes {
        let mut payload = BytesMut::new();
        payload.put_u32(PROTOCOL_3_0);
        let own = self.params.iter().filter(|(k, _)| !k.starts_with("_pq_.") && !extra.iter().any(|(e, _)| e == k));
        for (k, v) in own.map(|(k, v)| (k.as_str(), v.as_str())).chain(extra.iter().copied()) {
            payload.put_slice(k.as_bytes());
            payload.put_u8(0);
            payload.put_slice(v.as_bytes());
            payload.put_u8(0);
        }
        payload.put_u8(0);
        super::messages::untagged(&payload)
    }
}

/// Parses the payload of an untagged startup-phase packet (everything after the length).
pub fn parse_startup(payload: &Bytes) -> Result<StartupPacket, ProtocolError> {
    if payload.len() < 4 {
        return Err(ProtocolError::Malformed("startup packet"));
    }
    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    match code {
        SSL_REQUEST if payload.len() == 4 => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST if payload.len() == 4 => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST if payload.len() >= 12 && payload.len() <= 4 + 4 + 256 => {
            let pid = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            Ok(StartupPacket::Cancel { pid, secret: payload.slice(8..) })
        }
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut rest = &payload[4..];
            loop {
                let (key, after) = take_cstr(rest).ok_or(ProtocolError::Malformed("startup parameters"))?;
                if key.is_empty() {
                    if !after.is_empty() {
                        return Err(ProtocolError::Malformed("startup parameters: data after terminator"));
                    }
                    break;
                }
                let (value, after) = take_cstr(after).ok_or(ProtocolError::Malformed("startup parameter value"))?;
                let key = String::from_utf8(key.to_vec()).map_err(|_| ProtocolError::Malformed("startup parameter name"))?;
                let value = String::from_utf8_lossy(value).into_owned();
                params.push((key, value));
                rest = after;
            }
            if !params.iter().any(|(k, _)| k == "user") {
                return Err(ProtocolError::Malformed("startup packet: no user name"));
            }
            Ok(StartupPacket::Startup(StartupMessage { major: 3, minor: (code & 0xffff) as u16, params }))
        }
        _ => Err(ProtocolError::Malformed("startup packet: unsupported protocol code")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u32, params: &[(&str, &str)]) -> Bytes {
        let mut p = BytesMut::new();
        p.put_u32(code);
        for (k, v) in params {
            p.put_slice(k.as_bytes());
            p.put_u8(0);
            p.put_slice(v.as_bytes());
            p.put_u8(0);
        }
        p.put_u8(0);
        p.freeze()
    }

    #[test]
    fn parses_startup_and_defaults_database() {
        let p = payload(196_610, &[("user", "bob"), ("_pq_.x", "1")]);
        let StartupPacket::Startup(m) = parse_startup(&p).unwrap() else { panic!() };
        assert_eq!((m.minor, m.user(), m.database()), (2, "bob", "bob"));
        assert_eq!(m.protocol_options(), vec!["_pq_.x".to_string()]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_startup(&Bytes::from_static(&[1, 2, 3, 4, 5])).is_err());
        assert!(parse_startup(&payload(196_608, &[("database", "x")])).is_err());
    }
}
