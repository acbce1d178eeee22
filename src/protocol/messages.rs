//! The few messages the proxy builds itself or looks inside.

use bytes::{BufMut, Bytes, BytesMut};

/// Builds one tagged frame.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
    out.freeze()
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Severity of an error the proxy reports itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse (`E`) with severity, SQLSTATE, message and an optional detail/hint.
pub fn error_response(severity: Severity, sqlstate: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> Bytes {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', severity.as_str()), (b'V', severity.as_str()), (b'C', sqlstate), (b'M', message)] {
        body.put_u8(field);
        put_cstr(&mut body, value);
    }
    for (field, value) in [(b'D', detail), (b'H', hint)] {
        if let Some(value) = value {
            body.put_u8(field);
            put_cstr(&mut body, value);
        }
    }
    body.put_u8(0);
    frame(b'E', &body)
}

pub fn fatal(sqlstate: &str, message: &str) -> Bytes {
    error_response(Severity::Fatal, sqlstate, message, None, None)
}

pub fn notice(message: &str) -> Bytes {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        body.put_u8(field);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    frame(b'N', &body)
}

pub fn authentication(code: u32, extra: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(4 + extra.len());
    body.put_u32(code);
    body.put_slice(extra);
    frame(b'R', &body)
}

pub const AUTH_OK: u32 = 0;
pub const AUTH_CLEARTEXT: u32 = 3;
pub const AUTH_MD5: u32 = 5;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;
pub const AUTH_SASL_FINAL: u32 = 12;

/// AuthenticationSASL listing these mechanisms, preferred first.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    let mut extra = BytesMut::new();
    for mechanism in mechanisms {
        put_cstr(&mut extra, mechanism);
    }
    extra.put_u8(0);
    authentication(AUTH_SASL, &extra)
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, value);
    frame(b'S', &body)
}

pub fn backend_key_data(pid: u32, secret: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(pid);
    body.put_slice(secret);
    frame(b'K', &body)
}

pub fn ready_for_query(status: u8) -> Bytes {
    frame(b'Z', &[status])
}

pub fn query(sql: &str) -> Bytes {
    query_bytes(sql.as_bytes())
}

/// A simple Query whose text is not necessarily UTF-8 (it is in the client's encoding).
pub fn query_bytes(sql: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(sql.len() + 1);
    body.put_slice(sql);
    body.put_u8(0);
    frame(b'Q', &body)
}

/// Parse (`P`) of the unnamed statement, its parameters of the given type OIDs.
pub fn parse_unnamed(sql: &str, param_types: &[u32]) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, "");
    put_cstr(&mut body, sql);
    body.put_u16(param_types.len() as u16);
    for oid in param_types {
        body.put_u32(*oid);
    }
    frame(b'P', &body)
}

/// Bind (`B`) of the unnamed statement to the unnamed portal, all parameters and results in
/// text format. Values travel as data: no quoting, whatever `standard_conforming_strings` is.
pub fn bind_text(params: &[&[u8]]) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, "");
    put_cstr(&mut body, "");
    body.put_u16(0);
    body.put_u16(params.len() as u16);
    for value in params {
        body.put_u32(value.len() as u32);
        body.put_slice(value);
    }
    body.put_u16(0);
    frame(b'B', &body)
}

/// Execute (`E`) of the unnamed portal, all rows.
pub fn execute_unnamed() -> Bytes {
    frame(b'E', b"\0\0\0\0\0")
}

pub fn sync() -> Bytes {
    frame(b'S', &[])
}

pub fn terminate() -> Bytes {
    frame(b'X', &[])
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we ignore.
pub fn negotiate_protocol_version(minor: u32, unsupported: &[String]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(minor);
    body.put_u32(unsupported.len() as u32);
    for option in unsupported {
        put_cstr(&mut body, option);
    }
    frame(b'v', &body)
}

/// Untagged packet (startup phase): `length | payload`.
pub fn untagged(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    out.put_u32((payload.len() + 4) as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// Fields of an ErrorResponse or NoticeResponse body.
#[derive(Debug, Default, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// FATAL or PANIC: the server closes the connection after sending it.
    pub fn ends_session(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

pub fn parse_error_fields(mut body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, rest)) = take_cstr(rest) else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        body = rest;
    }
    fields
}

/// Name and value of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = take_cstr(body)?;
    let (value, _) = take_cstr(rest)?;
    Some((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

/// Columns of a DataRow as text (NULL as None).
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<Bytes>>> {
    let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut rest = &body[2..];
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        if rest.len() < 4 {
            return None;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            columns.push(None);
        } else {
            let len = len as usize;
            if rest.len() < len {
                return None;
            }
            columns.push(Some(Bytes::copy_from_slice(&rest[..len])));
            rest = &rest[len..];
        }
    }
    Some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameIter;

    #[test]
    fn error_response_round_trips() {
        let e = error_response(Severity::Fatal, "08P01", "bad", Some("d"), None);
        let (tag, body, _) = FrameIter::new(&e).next().unwrap();
        assert_eq!(tag, b'E');
        let f = parse_error_fields(body);
        assert_eq!((f.severity.as_str(), f.code.as_str(), f.message.as_str()), ("FATAL", "08P01", "bad"));
    }

    #[test]
    fn data_row_parses_nulls() {
        let body = [0u8, 2, 0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff];
        let row = parse_data_row(&body).unwrap();
        assert_eq!(row[0].as_deref(), Some(&b"x"[..]));
        assert!(row[1].is_none());
    }
}
