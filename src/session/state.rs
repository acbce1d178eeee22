//! What the proxy knows about one client session, learned from the frames passing through:
//! enough to tell when it is safe to move and what to replay on another server.

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::messages::{parse_parameter_status, take_cstr};

/// Largest Parse message kept for replay; a larger one is streamed through and the session
/// cannot move while the server holds its statement.
pub const PARSE_KEPT: usize = 1 << 20;

#[derive(Default)]
pub struct ProtocolState {
    /// Transaction status from the last ReadyForQuery: `I`, `T` or `E`.
    pub tx_status: u8,
    /// Requests sent (simple Query, FunctionCall, Sync) whose ReadyForQuery has not come back.
    pub outstanding: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// ParameterStatus values as the client last saw them.
    pub params: HashMap<String, String>,
    /// Named protocol-level prepared statements: name → Parse message body, for replay.
    pub prepared: HashMap<Bytes, Bytes>,
    /// Transactions ended (ReadyForQuery `I` after a request), for metrics.
    pub queries: u64,
}

/// What a client frame means to the proxy.
pub enum ClientEvent {
    Forward,
    Terminate,
}

impl ProtocolState {
    pub fn new(initial_params: &[(String, String)]) -> Self {
        Self { tx_status: b'I', params: initial_params.iter().cloned().collect(), ..Default::default() }
    }

    /// Safe to move to another server: idle, nothing in flight, no half-sent extended batch.
    pub fn is_quiescent(&self) -> bool {
        self.tx_status == b'I' && self.outstanding == 0 && !self.unsynced
    }

    /// The server still has answers to send for what the client sent.
    pub fn owes_answers(&self) -> bool {
        self.outstanding > 0 || self.unsynced
    }

    /// Idle inside a transaction block: waiting for the client, nothing in flight.
    pub fn is_idle_in_transaction(&self) -> bool {
        self.tx_status != b'I' && self.outstanding == 0 && !self.unsynced
    }

    pub fn on_client_frame(&mut self, tag: u8, body: &[u8]) -> ClientEvent {
        match tag {
            b'Q' | b'F' => {
                self.outstanding += 1;
                self.queries += 1;
            }
            b'S' => {
                self.outstanding += 1;
                self.unsynced = false;
            }
            b'P' => {
                self.unsynced = true;
                if let Some((name, _)) = take_cstr(body) {
                    if !name.is_empty() {
                        self.prepared.insert(Bytes::copy_from_slice(name), Bytes::copy_from_slice(body));
                    }
                }
            }
            b'C' => {
                self.unsynced = true;
                if let Some((&b'S', rest)) = body.split_first() {
                    if let Some((name, _)) = take_cstr(rest) {
                        self.prepared.remove(name);
                    }
                }
            }
            b'E' => {
                self.unsynced = true;
                self.queries += 1;
            }
            b'B' | b'D' | b'H' => self.unsynced = true,
            b'X' => return ClientEvent::Terminate,
            _ => {}
        }
        ClientEvent::Forward
    }

    /// The head of a frame too large to hold whole, streamed through: it counts as the whole
    /// frame would, except that a Parse is not kept (its statement cannot be replayed).
    pub fn on_client_head(&mut self, tag: u8, head: &[u8]) -> ClientEvent {
        if tag == b'P' {
            self.unsynced = true;
            return ClientEvent::Forward;
        }
        self.on_client_frame(tag, head)
    }

    /// Returns true for a ReadyForQuery.
    pub fn on_server_frame(&mut self, tag: u8, body: &[u8]) -> bool {
        match tag {
            b'Z' => {
                self.tx_status = body.first().copied().unwrap_or(b'I');
                self.outstanding = self.outstanding.saturating_sub(1);
                true
            }
            b'S' => {
                if let Some((name, value)) = parse_parameter_status(body) {
                    self.params.insert(name, value);
                }
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_pipelined_syncs_and_prepared_statements() {
        let mut s = ProtocolState::new(&[]);
        assert!(s.is_quiescent());
        s.on_client_frame(b'P', b"s1\0select 1\0\0\0");
        assert!(!s.is_quiescent());
        s.on_client_frame(b'S', b"");
        s.on_client_frame(b'S', b"");
        assert_eq!(s.outstanding, 2);
        s.on_server_frame(b'Z', b"I");
        assert!(!s.is_quiescent());
        s.on_server_frame(b'Z', b"T");
        assert!(s.is_idle_in_transaction());
        s.on_server_frame(b'Z', b"I");
        assert!(s.prepared.contains_key(&b"s1"[..]));
        s.on_client_frame(b'C', b"Ss1\0");
        assert!(!s.prepared.contains_key(&b"s1"[..]));
    }

    #[test]
    fn streamed_heads_count_but_a_parse_is_not_kept() {
        let mut s = ProtocolState::new(&[]);
        s.on_client_head(b'P', b"big\0select ");
        assert!(!s.is_quiescent());
        assert!(s.prepared.is_empty());
        s.on_client_head(b'Q', b"select '");
        assert_eq!(s.outstanding, 1);
        s.on_client_frame(b'P', b"s1\0select 1\0\0\0");
        s.on_client_head(b'C', b"Ss1\0");
        assert!(s.prepared.is_empty());
    }
}
