//! Property tests (fuzzing) of everything that reads bytes from a peer: the frame reader, the
//! startup packet, the SCRAM and md5 messages, and the few server messages the proxy looks
//! inside. Arbitrary input must never panic and never yield more than the limits allow; valid
//! input must come out byte for byte. They run with the unit tests, 256 cases per property
//! (`PROPTEST_CASES` raises that for a long run).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use crate::auth::{
    md5_response_from_password, md5_stored, md5_verify, ScramClient, ScramServer, ScramVerifier, StoredSecret, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use crate::protocol::messages::{error_response, frame, parameter_status, parse_data_row, parse_error_fields, parse_parameter_status, Severity};
use crate::protocol::startup::{parse_startup, StartupError, StartupPacket, CANCEL_REQUEST, PROTOCOL_3_0};
use crate::protocol::frame::{READ_CHUNK, WHOLE_FRAME};
use crate::protocol::{Batch, FrameIter, FrameReader, ProtocolError};

/// The largest startup packet `read_startup` accepts, length field included.
const MAX_STARTUP_PACKET: usize = 10_000;

/// A peer that sends `data` in pieces of the given sizes (cycling), then closes.
struct Chunked {
    data: Bytes,
    sizes: Vec<usize>,
    reads: usize,
}

impl Chunked {
    fn new(data: &[u8], sizes: &[usize]) -> Self {
        Self { data: Bytes::copy_from_slice(data), sizes: sizes.to_vec(), reads: 0 }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let size = self.sizes.get(self.reads % self.sizes.len().max(1)).copied().unwrap_or(1).max(1);
        self.reads += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let piece = self.data.split_to(n);
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

/// Every read of `read` until the end of the stream or an error (the peer never makes a read
/// wait, so polling once is enough).
fn read_all<T>(mut read: impl FnMut() -> Result<Option<T>, ProtocolError>) -> (Vec<T>, Option<ProtocolError>) {
    let mut out = Vec::new();
    loop {
        match read() {
            Ok(Some(item)) => out.push(item),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn batches(data: &[u8], sizes: &[usize], limit: usize) -> (Vec<Bytes>, Option<ProtocolError>) {
    let (batches, error) = batches_read_by(data, sizes, limit, READ_CHUNK);
    let bytes = batches
        .into_iter()
        .map(|b| {
            assert!(b.continued == 0 && !b.open, "a small frame was streamed");
            b.bytes
        })
        .collect();
    (bytes, error)
}

/// The non-empty batches, each read taking at most `read_limit` bytes.
fn batches_read_by(data: &[u8], sizes: &[usize], limit: usize, read_limit: usize) -> (Vec<Batch>, Option<ProtocolError>) {
    let mut reader = FrameReader::new(Chunked::new(data, sizes), limit);
    let (batches, error) = read_all(|| futures::executor::block_on(reader.read_batch(read_limit)));
    (batches.into_iter().filter(|b| !b.is_empty()).collect(), error)
}

fn frames(data: &[u8], sizes: &[usize], limit: usize) -> (Vec<(u8, Bytes)>, Option<ProtocolError>) {
    let mut reader = FrameReader::new(Chunked::new(data, sizes), limit);
    read_all(|| futures::executor::block_on(reader.read_frame()))
}

/// The frames of a batch, checked against their headers: each one whole and within `limit`.
fn whole_frames(batch: &[u8], limit: usize) -> Vec<(u8, Vec<u8>)> {
    let mut rest = batch;
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a batch ends in a partial header");
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        assert!((4..=limit).contains(&len), "frame length {len} outside 4..={limit}");
        assert!(rest.len() > len, "a batch ends in a partial frame");
        out.push((rest[0], rest[5..len + 1].to_vec()));
        rest = &rest[len + 1..];
    }
    out
}

fn encode(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    frames.iter().flat_map(|(tag, body)| frame(*tag, body).to_vec()).collect()
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![vec(1usize..8, 1..8), vec(1usize..300, 1..8), Just(vec![1]), Just(vec![1 << 16])]
}

fn valid_frames(max_body: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    vec((any::<u8>(), vec(any::<u8>(), 0..max_body)), 0..24)
}

/// Bytes that are mostly frames, with a corrupted byte or a cut here and there.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (valid_frames(64), any::<prop::sample::Index>(), any::<u8>(), any::<bool>(), any::<prop::sample::Index>()).prop_map(|(frames, at, byte, cut, cut_at)| {
        let mut data = encode(&frames);
        if !data.is_empty() {
            let i = at.index(data.len());
            data[i] = byte;
            if cut {
                data.truncate(cut_at.index(data.len()));
            }
        }
        data
    })
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..512), frame_like_bytes()]
}

/// An untagged StartupMessage payload (without the length) with `code` and `params`.
pub(crate) fn startup_payload(code: u32, params: &[(impl AsRef<str>, impl AsRef<str>)]) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    for (name, value) in params {
        payload.extend_from_slice(name.as_ref().as_bytes());
        payload.push(0);
        payload.extend_from_slice(value.as_ref().as_bytes());
        payload.push(0);
    }
    payload.push(0);
    Bytes::from(payload)
}

/// The parameters of an encoded StartupMessage packet (length and code first), in order.
pub(crate) fn packet_params(packet: &[u8]) -> Vec<(String, String)> {
    let mut rest = packet.get(8..).unwrap_or_default();
    let mut out = Vec::new();
    while let Some((name, after)) = crate::protocol::messages::take_cstr(rest) {
        let Some((value, after)) = crate::protocol::messages::take_cstr(after).filter(|_| !name.is_empty()) else { break };
        out.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
        rest = after;
    }
    out
}

/// Text without NUL (what a C string can carry).
fn cstr_text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().filter(|&c| c != '\0').collect())
}

fn sqlstate() -> impl Strategy<Value = String> {
    vec(prop::sample::select(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_vec()), 5).prop_map(|c| String::from_utf8_lossy(&c).into_owned())
}

/// A verifier with one PBKDF2 round: the exchange logic is the same, and each case is cheap.
fn cheap_verifier(password: &str) -> ScramVerifier {
    ScramVerifier::from_password(password, b"fuzz-salt", 1).expect("verifier")
}

proptest! {
    #[test]
    fn read_batch_takes_any_bytes(data in any_bytes(), sizes in chunk_sizes(), limit in 4usize..600) {
        let (batches, error) = batches(&data, &sizes, limit);
        let mut seen = Vec::new();
        for batch in &batches {
            prop_assert!(!batch.is_empty());
            whole_frames(batch, limit);
            seen.extend_from_slice(batch);
        }
        prop_assert!(data.starts_with(&seen), "batches are the input's first bytes, in order");
        if error.is_none() {
            prop_assert_eq!(seen, data, "a clean end of stream after every byte was returned");
        }
    }

    #[test]
    fn read_batch_reassembles_valid_frames(frames in valid_frames(300), sizes in chunk_sizes()) {
        let data = encode(&frames);
        let (batches, error) = batches(&data, &sizes, 304);
        prop_assert!(error.is_none(), "{error:?}");
        prop_assert_eq!(batches.concat(), data.clone());
        let read: Vec<(u8, Vec<u8>)> = batches.iter().flat_map(|b| whole_frames(b, 304)).collect();
        prop_assert_eq!(&read, &frames);
        let iterated: Vec<(u8, Vec<u8>)> = batches.iter().flat_map(|b| FrameIter::new(b).map(|(t, body, _)| (t, body.to_vec())).collect::<Vec<_>>()).collect();
        prop_assert_eq!(iterated, frames);
    }

    #[test]
    fn read_batch_takes_reads_of_any_limit(frames in valid_frames(300), sizes in chunk_sizes(), read_limit in 1usize..64) {
        let data = encode(&frames);
        let (batches, error) = batches_read_by(&data, &sizes, 304, read_limit);
        prop_assert!(error.is_none(), "{error:?}");
        let bytes: Vec<Bytes> = batches.into_iter().map(|b| b.bytes).collect();
        prop_assert_eq!(bytes.concat(), data);
        let read: Vec<(u8, Vec<u8>)> = bytes.iter().flat_map(|b| whole_frames(b, 304)).collect();
        prop_assert_eq!(read, frames);
    }

    /// Frames over WHOLE_FRAME stream through in pieces: the batches are the input byte for
    /// byte, each frame starts in exactly one batch (whole, or as the open head at its end),
    /// and no batch holds more than a read's worth beyond a whole frame.
    #[test]
    fn large_frames_stream_byte_for_byte(
        frames in vec((any::<u8>(), prop_oneof![0usize..100, (WHOLE_FRAME - 8)..(3 * WHOLE_FRAME)]), 0..6),
        sizes in vec(100usize..5000, 1..4),
        read_limit in prop_oneof![Just(READ_CHUNK), 1000usize..20_000],
    ) {
        let frames: Vec<(u8, Vec<u8>)> = frames.into_iter().map(|(tag, len)| (tag, vec![tag; len])).collect();
        let data = encode(&frames);
        let (batches, error) = batches_read_by(&data, &sizes, 1 << 20, read_limit);
        prop_assert!(error.is_none(), "{error:?}");
        let mut next = 0;
        let mut streaming = false;
        for batch in &batches {
            prop_assert!(batch.bytes.len() <= WHOLE_FRAME + read_limit.max(READ_CHUNK));
            prop_assert_eq!(batch.continued > 0, streaming, "a batch continues exactly after an open head");
            streaming = batch.open;
            for (tag, body, whole) in batch.frames() {
                let (expected_tag, expected_body) = &frames[next];
                next += 1;
                prop_assert_eq!(tag, *expected_tag);
                if whole {
                    prop_assert_eq!(body, &expected_body[..]);
                } else {
                    prop_assert!(expected_body.len() + 5 > WHOLE_FRAME, "a frame of {} bytes streamed", expected_body.len() + 5);
                    prop_assert!(expected_body.starts_with(body));
                }
            }
        }
        prop_assert!(!streaming);
        prop_assert_eq!(next, frames.len());
        prop_assert_eq!(batches.iter().map(|b| b.bytes.clone()).collect::<Vec<_>>().concat(), data);
    }

    #[test]
    fn read_batch_refuses_frames_over_the_limit(frames in valid_frames(300), sizes in chunk_sizes(), limit in 4usize..304) {
        let data = encode(&frames);
        let (batches, error) = batches(&data, &sizes, limit);
        let returned: usize = batches.iter().map(|b| whole_frames(b, limit).len()).sum();
        match frames.iter().position(|(_, body)| body.len() + 4 > limit) {
            Some(first_too_long) => {
                // Frames before the long one may come first, or be dropped with the error.
                prop_assert!(returned <= first_too_long);
                prop_assert!(matches!(error, Some(ProtocolError::TooLong(..))), "{error:?}");
            }
            None => prop_assert!(error.is_none() && returned == frames.len()),
        }
    }

    #[test]
    fn read_frame_takes_any_bytes(data in any_bytes(), sizes in chunk_sizes(), limit in 4usize..600) {
        let (frames, error) = frames(&data, &sizes, limit);
        let mut seen = Vec::new();
        for (tag, body) in &frames {
            prop_assert!(body.len() + 4 <= limit, "frame of {} bytes over the limit {limit}", body.len() + 4);
            seen.extend_from_slice(&frame(*tag, body));
        }
        prop_assert!(data.starts_with(&seen));
        if error.is_none() {
            prop_assert_eq!(seen, data);
        }
    }

    #[test]
    fn read_frame_reassembles_valid_frames(frames in valid_frames(300), sizes in chunk_sizes()) {
        let data = encode(&frames);
        let (read, error) = frames_read(&data, &sizes);
        prop_assert!(error.is_none(), "{error:?}");
        prop_assert_eq!(read, frames);
    }

    #[test]
    fn read_startup_takes_any_bytes(data in any_bytes(), sizes in chunk_sizes()) {
        let mut reader = FrameReader::new(Chunked::new(&data, &sizes), 1 << 20);
        let (packets, _) = read_all(|| futures::executor::block_on(reader.read_startup()));
        for packet in &packets {
            prop_assert!(packet.len() + 4 <= MAX_STARTUP_PACKET && packet.len() >= 4);
            let _ = parse_startup(packet);
        }
    }

    #[test]
    fn frame_iter_takes_any_bytes(data in any_bytes()) {
        let mut frames = 0;
        let mut body_bytes = 0;
        for (_, body, _) in FrameIter::new(&data) {
            frames += 1;
            body_bytes += body.len();
        }
        prop_assert!(frames <= data.len() && body_bytes <= data.len());
    }

    #[test]
    fn parse_startup_takes_any_payload(data in any_bytes(), code in prop_oneof![Just(PROTOCOL_3_0), Just(CANCEL_REQUEST), Just(196_610u32), any::<u32>()]) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&data);
        for packet in [Bytes::from(payload), Bytes::from(data)] {
            // Whatever is accepted reaches a server as checked: user and database first, each
            // name once, no replication or protocol option.
            let Ok(StartupPacket::Startup(message)) = parse_startup(&packet) else { continue };
            let sent = packet_params(&message.encode_for_server());
            prop_assert_eq!(&sent[0], &("user".to_string(), message.user().to_string()));
            prop_assert_eq!(&sent[1], &("database".to_string(), message.database().to_string()));
            for (i, (name, _)) in sent.iter().enumerate() {
                prop_assert!(!sent[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)), "{} twice", name);
                prop_assert!(name != "replication" && !name.starts_with("_pq_."));
            }
        }
    }

    #[test]
    fn startup_messages_round_trip(user in cstr_text(16), params in vec((cstr_text(12), cstr_text(24)), 0..8), minor in 0u32..4) {
        prop_assume!(!user.is_empty() && user.len() <= 63);
        // Distinct names (Postgres compares setting names without case), none of the
        // identity ones: the server gets the user, the database (the user's name) and these.
        let mut settings: Vec<(String, String)> = Vec::new();
        for (name, value) in params {
            let identity = ["user", "database", "replication"].iter().any(|n| name.eq_ignore_ascii_case(n)) || name.starts_with("_pq_.");
            if !name.is_empty() && !identity && !settings.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                settings.push((name, value));
            }
        }
        let mut all = vec![("user".to_string(), user.clone())];
        all.extend(settings.iter().cloned());
        // The packet as a client of protocol 3.`minor` sends it.
        let parsed = parse_startup(&startup_payload(PROTOCOL_3_0 + minor, &all));
        let Ok(StartupPacket::Startup(parsed)) = parsed else { panic!("valid startup refused: {parsed:?}") };
        prop_assert_eq!(u32::from(parsed.minor), minor);
        let mut expected = vec![("user".to_string(), user.clone()), ("database".to_string(), user)];
        expected.extend(settings);
        prop_assert_eq!(packet_params(&parsed.encode_for_server()), expected);
    }

    #[test]
    fn a_repeated_startup_parameter_is_refused(
        params in vec((prop::sample::select(vec!["user", "database", "replication", "options", "User", "TimeZone", "timezone"]), cstr_text(8)), 2..6)
    ) {
        let repeated = params.iter().enumerate().any(|(i, (name, _))| params[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
        let all: Vec<(String, String)> = params.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        match parse_startup(&startup_payload(PROTOCOL_3_0, &all)) {
            Err(StartupError::Refused { sqlstate, message, .. }) if repeated => {
                prop_assert_eq!(sqlstate, "08P01");
                prop_assert!(message.contains("more than once"), "{}", message);
            }
            Ok(_) if repeated => panic!("a repeated parameter was accepted: {all:?}"),
            _ => {}
        }
    }

    #[test]
    fn cancel_requests_round_trip(pid in any::<u32>(), secret in vec(any::<u8>(), 4..=256)) {
        let mut payload = CANCEL_REQUEST.to_be_bytes().to_vec();
        payload.extend_from_slice(&pid.to_be_bytes());
        payload.extend_from_slice(&secret);
        let Ok(StartupPacket::Cancel { pid: p, secret: s }) = parse_startup(&Bytes::from(payload)) else { panic!("cancel request refused") };
        prop_assert_eq!((p, s.to_vec()), (pid, secret));
    }

    #[test]
    fn scram_client_first_takes_any_bytes(data in prop_oneof![
        vec(any::<u8>(), 0..200),
        (prop_oneof![Just("n,,"), Just("y,,"), Just("p=x,,"), Just("n,a=u,")], cstr_text(20), vec(any::<u8>(), 0..40))
            .prop_map(|(gs2, user, nonce)| [gs2.as_bytes(), b"n=", user.as_bytes(), b",r=", &nonce].concat()),
    ]) {
        let mut server = ScramServer::new(cheap_verifier("pw"));
        if let Ok(first) = server.client_first(&data) {
            prop_assert!(first.starts_with(b"r="));
        }
        // Whatever the first message was, the exchange cannot be completed without the proof.
        prop_assert!(server.client_final(b"c=biws,r=x,p=AAAA").is_err());
        prop_assert!(server.client_key().is_none());
        // Over TLS (channel binding offered), with either mechanism the client may name.
        for mechanism in [SCRAM_SHA_256, SCRAM_SHA_256_PLUS] {
            let mut server = ScramServer::with_channel_binding(cheap_verifier("pw"), Some(vec![7; 32]));
            if let Ok(first) = server.client_first_for(mechanism.as_bytes(), &data) {
                prop_assert!(first.starts_with(b"r="));
            }
            prop_assert!(server.client_final(b"c=biws,r=x,p=AAAA").is_err());
            prop_assert!(server.client_key().is_none());
        }
    }

    #[test]
    fn pass_through_client_takes_any_server_bytes(data in vec(any::<u8>(), 0..200)) {
        // A ClientKey from a real exchange, then arbitrary server-first / server-final bytes.
        let verifier = cheap_verifier("pw");
        let mut front = ScramServer::new(verifier.clone());
        let mut password_client = ScramClient::new("pw").expect("client");
        let server_first = front.client_first(&password_client.client_first()).expect("client-first");
        front.client_final(&password_client.server_first(&server_first).expect("server-first")).expect("right password");
        let key = front.client_key().expect("client key");
        let mut client = ScramClient::with_client_key(key.clone(), verifier.clone());
        let _ = client.server_first(&data);
        let _ = client.server_final(&data);
        // A server-first that extends the nonce with arbitrary salt bytes: only the verifier's
        // own salt and iteration count are answered.
        let mut client = ScramClient::with_client_key(key, verifier.clone());
        let nonce = client.client_first()[b"n,,n=,r=".len()..].to_vec();
        let server_first = [b"r=".as_slice(), &nonce, b"x,s=", &data, b",i=1"].concat();
        if client.server_first(&server_first).is_ok() {
            use base64::Engine as _;
            let salt = base64::engine::general_purpose::STANDARD.decode(&data).ok();
            prop_assert_eq!(salt.as_deref(), Some(verifier.salt()));
            prop_assert!(client.server_final(&data).is_err());
        }
    }

    #[test]
    fn stored_secrets_and_certificates_take_any_bytes(data in vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&data);
        let _ = StoredSecret::parse(&text);
        let _ = StoredSecret::parse(&format!("md5{text}"));
        let _ = StoredSecret::parse(&format!("SCRAM-SHA-256${text}"));
        if let Some(hash) = crate::auth::channel_binding::tls_server_end_point(&data) {
            prop_assert!([32, 48, 64].contains(&hash.len()));
        }
    }

    #[test]
    fn scram_client_final_takes_any_bytes(data in prop_oneof![
        vec(any::<u8>(), 0..200),
        (vec(any::<u8>(), 0..60), vec(any::<u8>(), 0..48)).prop_map(|(attrs, proof)| {
            use base64::Engine as _;
            [attrs.as_slice(), b",p=", base64::engine::general_purpose::STANDARD.encode(proof).as_bytes()].concat()
        }),
    ]) {
        // As is, and after the right channel binding and nonce so the checks reach the proof.
        for prefix_with_nonce in [false, true] {
            let mut server = ScramServer::new(cheap_verifier("pw"));
            let first = server.client_first(b"n,,n=,r=clientnonce").expect("valid client-first");
            let nonce = first.split(|&b| b == b',').next().map(|r| r[2..].to_vec()).unwrap_or_default();
            let message = if prefix_with_nonce { [b"c=biws,r=".as_slice(), &nonce, b",", &data].concat() } else { data.clone() };
            // Random bytes are never the proof (2^-256).
            prop_assert!(server.client_final(&message).is_err());
            prop_assert!(server.client_key().is_none());
        }
    }

    #[test]
    fn scram_exchange_succeeds_only_with_the_password(password in cstr_text(12), attempt in cstr_text(12)) {
        let verifier = cheap_verifier(&password);
        prop_assert_eq!(ScramVerifier::parse(&verifier.to_string()).ok(), Some(verifier.clone()));
        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::new(&attempt).expect("client");
        let server_first = server.client_first(&client.client_first()).expect("client-first");
        let client_final = client.server_first(&server_first).expect("server-first");
        let outcome = server.client_final(&client_final);
        prop_assert_eq!(outcome.is_ok(), password == attempt);
        if let Ok(server_final) = outcome {
            prop_assert!(client.server_final(&server_final).is_ok());
        }
    }

    #[test]
    fn scram_client_side_takes_any_server_bytes(data in vec(any::<u8>(), 0..200), iterations in 1u32..4) {
        let mut client = ScramClient::new("pw").expect("client");
        let _ = client.server_first(&data);
        let _ = client.server_final(&data);
        // A server-first that extends our nonce, with arbitrary salt bytes and a few rounds.
        let mut client = ScramClient::new("pw").expect("client");
        let nonce = client.client_first()[b"n,,n=,r=".len()..].to_vec();
        let server_first = [b"r=".as_slice(), &nonce, b"x,s=", &data, b",i=", iterations.to_string().as_bytes()].concat();
        if client.server_first(&server_first).is_ok() {
            prop_assert!(client.server_final(&data).is_err());
        }
        let _ = ScramVerifier::parse(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn md5_takes_any_response(user in cstr_text(12), password in cstr_text(12), salt in any::<[u8; 4]>(), stored in cstr_text(40), response in vec(any::<u8>(), 0..64)) {
        let right = md5_response_from_password(&user, &password, salt);
        prop_assert!(md5_verify(&md5_stored(&user, &password), salt, right.as_bytes()));
        prop_assert!(!md5_verify(&md5_stored(&user, &password), salt, &response) || response == right.as_bytes());
        let _ = md5_verify(&stored, salt, &response);
    }

    #[test]
    fn server_messages_take_any_bytes(data in any_bytes()) {
        let _ = parse_error_fields(&data);
        let _ = parse_parameter_status(&data);
        if let Some(columns) = parse_data_row(&data) {
            let bytes: usize = columns.iter().flatten().map(|c| c.len()).sum();
            prop_assert!(bytes + 2 + 4 * columns.len() <= data.len());
        }
    }

    #[test]
    fn server_messages_round_trip(code in sqlstate(), message in cstr_text(40), name in cstr_text(20), value in cstr_text(40),
        columns in vec(prop::option::of(vec(any::<u8>(), 0..40)), 0..12)) {
        let e = error_response(Severity::Fatal, &code, &message, Some("detail"), None);
        let fields = parse_error_fields(&e[5..]);
        prop_assert_eq!((fields.severity.as_str(), fields.code.as_str(), fields.message.as_str()), ("FATAL", code.as_str(), message.as_str()));
        prop_assert!(fields.ends_session());
        let s = parameter_status(&name, &value);
        prop_assert_eq!(parse_parameter_status(&s[5..]), Some((name, value)));
        let mut row = BytesMut::new();
        row.put_u16(columns.len() as u16);
        for column in &columns {
            match column {
                Some(c) => {
                    row.put_i32(c.len() as i32);
                    row.put_slice(c);
                }
                None => row.put_i32(-1),
            }
        }
        let parsed = parse_data_row(&row).expect("a valid DataRow");
        let parsed: Vec<Option<Vec<u8>>> = parsed.into_iter().map(|c| c.map(|b| b.to_vec())).collect();
        prop_assert_eq!(parsed, columns);
    }
}

fn frames_read(data: &[u8], sizes: &[usize]) -> (Vec<(u8, Vec<u8>)>, Option<ProtocolError>) {
    let (frames, error) = frames(data, sizes, 304);
    (frames.into_iter().map(|(t, b)| (t, b.to_vec())).collect(), error)
}
