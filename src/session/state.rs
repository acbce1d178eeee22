//! What the proxy knows about one client session, learned from the frames passing through:
//! enough to tell when it is safe to move and what to replay on another server.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::protocol::messages::{parse_parameter_status, take_cstr};

/// Largest Parse message kept for replay; a larger one is streamed through and the session
/// cannot move while the server holds its statement.
pub const PARSE_KEPT: usize = 1 << 20;

/// Unanswered requests kept in order with what came before them; more (a client pipelining
/// without reading) are only counted, so memory stays small whatever the client sends.
const REQUESTS_KEPT: usize = 1024;

#[derive(Default)]
pub struct ProtocolState {
    /// Transaction status from the last ReadyForQuery: `I`, `T` or `E`.
    pub tx_status: u8,
    /// Requests sent (simple Query, FunctionCall, Sync) whose ReadyForQuery has not come back,
    /// oldest first. A Sync the server ignores (sent during COPY FROM STDIN) leaves the list
    /// once that is known.
    requests: VecDeque<Request>,
    /// Unanswered requests sent after those in `requests`, beyond [`REQUESTS_KEPT`].
    requests_beyond: usize,
    /// What the client sent since its last request (see [`Segment`]).
    segment: Segment,
    /// The server is in COPY FROM STDIN and the client has sent nothing but Syncs and Flushes
    /// since: the server ignores those Syncs. (After CopyData, a Sync would be answered if the
    /// data failed before the server read it: such a Sync is counted, never guessed away.)
    copy_in_quiet: bool,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// ParameterStatus values as the client last saw them.
    pub params: HashMap<String, String>,
    /// Named protocol-level prepared statements: name → Parse message body, for replay.
    pub prepared: HashMap<Bytes, Bytes>,
    /// Transactions ended (ReadyForQuery `I` after a request), for metrics.
    pub queries: u64,
}

/// A request that the server answers with ReadyForQuery.
#[derive(Clone, Copy)]
struct Request {
    /// `Q`, `F` or `S`; 0 for one that was only counted.
    tag: u8,
    /// What the client sent between the previous request and this one.
    before: Segment,
    /// `unsynced` just before this request (a Sync clears it).
    unsynced_before: bool,
}

impl Request {
    /// Counted beyond [`REQUESTS_KEPT`]: nothing is known of it.
    const UNKNOWN: Request = Request { tag: 0, before: Segment::Other, unsynced_before: true };
}

/// What the client sent between two requests, as far as a COPY FROM STDIN started in it (the
/// server's CopyInResponse arrives after the client may have sent more) decides which Syncs the
/// server ignores.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum Segment {
    /// Nothing, or Flushes only.
    #[default]
    Empty,
    /// Messages, none of them an Execute.
    NoExecute,
    /// Exactly one Execute, followed by Flushes only: a copy started in this segment started
    /// there, and the server reads what follows it in copy mode.
    ExecuteLast,
    /// Anything else: where a copy started, and what it read, is not known.
    Other,
}

impl Segment {
    fn after(self, tag: u8) -> Segment {
        match (self, tag) {
            (_, b'H') => self,
            (Segment::Empty | Segment::NoExecute, b'E') => Segment::ExecuteLast,
            (Segment::Empty | Segment::NoExecute, _) => Segment::NoExecute,
            _ => Segment::Other,
        }
    }
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
        self.tx_status == b'I' && self.outstanding() == 0 && !self.unsynced
    }

    /// The server still has answers to send for what the client sent.
    pub fn owes_answers(&self) -> bool {
        self.outstanding() > 0 || self.unsynced
    }

    /// Idle inside a transaction block: waiting for the client, nothing in flight.
    pub fn is_idle_in_transaction(&self) -> bool {
        self.tx_status != b'I' && self.outstanding() == 0 && !self.unsynced
    }

    /// Requests whose ReadyForQuery has not come back.
    pub fn outstanding(&self) -> usize {
        self.requests.len() + self.requests_beyond
    }

    /// The server connection is gone: nothing it owed will come.
    pub fn server_gone(&mut self) {
        self.requests.clear();
        self.requests_beyond = 0;
        self.copy_in_quiet = false;
    }

    pub fn on_client_frame(&mut self, tag: u8, body: &[u8]) -> ClientEvent {
        if !self.track_order(tag) {
            return ClientEvent::Forward;
        }
        match tag {
            b'Q' | b'F' => self.queries += 1,
            b'S' => self.unsynced = false,
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

    /// Keeps the order of requests and what came between them; false for a Sync that the server
    /// ignores (it answers nothing, and ends no batch).
    fn track_order(&mut self, tag: u8) -> bool {
        match tag {
            b'S' if self.copy_in_quiet => return false,
            b'H' => {}
            _ => self.copy_in_quiet = false,
        }
        match tag {
            b'Q' | b'F' | b'S' => {
                let request = Request { tag, before: std::mem::take(&mut self.segment), unsynced_before: self.unsynced };
                if self.requests.len() < REQUESTS_KEPT && self.requests_beyond == 0 {
                    self.requests.push_back(request);
                } else {
                    self.requests_beyond += 1;
                }
            }
            b'X' => {}
            _ => self.segment = self.segment.after(tag),
        }
        true
    }

    /// The head of a frame too large to hold whole, streamed through: it counts as the whole
    /// frame would, except that a Parse is not kept (its statement cannot be replayed).
    pub fn on_client_head(&mut self, tag: u8, head: &[u8]) -> ClientEvent {
        if tag == b'P' {
            self.track_order(tag);
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
                self.requests.pop_front();
                if self.requests_beyond > 0 {
                    self.requests_beyond -= 1;
                    self.requests.push_back(Request::UNKNOWN);
                }
                true
            }
            // CopyInResponse, CopyBothResponse: the server reads the client in copy mode.
            b'G' | b'W' => {
                self.copy_in_started();
                false
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

    /// The server started a COPY FROM STDIN: Syncs it reads in copy mode get no answer. Which
    /// those are follows from what the client sent after the start, which is either the oldest
    /// unanswered request (a simple Query) or an Execute just before it. Where that is not
    /// certain, every Sync stays counted: the session then looks busy, never idle too early.
    fn copy_in_started(&mut self) {
        let first = match self.requests.front() {
            // Before any Sync: the Execute is among the latest messages.
            None => {
                self.copy_in_quiet = self.segment == Segment::ExecuteLast;
                return;
            }
            // The Query ran the COPY; it is answered when the copy ends.
            Some(r) if r.tag == b'Q' && matches!(r.before, Segment::Empty | Segment::NoExecute) => 1,
            // The one Execute just before this Sync ran the COPY.
            Some(r) if r.tag == b'S' && r.before == Segment::ExecuteLast => 0,
            Some(_) => {
                self.copy_in_quiet = false;
                return;
            }
        };
        // Read in copy mode: that first Sync, and Syncs with nothing but Flushes before them.
        let count = self.requests.iter().skip(first).enumerate().take_while(|(i, r)| r.tag == b'S' && (r.before == Segment::Empty || first + i == 0)).count();
        let end = first + count;
        self.copy_in_quiet = end == self.requests.len() && self.requests_beyond == 0 && self.segment == Segment::Empty;
        if count > 0 {
            let unsynced_before = self.requests[first].unsynced_before;
            self.requests.drain(first..end);
            if !self.requests.iter().skip(first).any(|r| r.tag == b'S') {
                // No Sync the server answers came after them: their batch is still open.
                self.unsynced |= unsynced_before;
            }
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
        assert_eq!(s.outstanding(), 2);
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
        assert_eq!(s.outstanding(), 1);
        s.on_client_frame(b'P', b"s1\0select 1\0\0\0");
        s.on_client_head(b'C', b"Ss1\0");
        assert!(s.prepared.is_empty());
    }

    /// Client messages by tag (bodies do not matter here, except a Parse's).
    fn client(s: &mut ProtocolState, tags: &[u8]) {
        for &tag in tags {
            s.on_client_frame(tag, b"");
        }
    }

    fn server(s: &mut ProtocolState, tags: &[u8]) {
        for &tag in tags {
            s.on_server_frame(tag, if tag == b'Z' { b"I" } else { b"" });
        }
    }

    /// COPY FROM STDIN in a simple Query: answered once, when the copy ends.
    #[test]
    fn simple_query_copy_in() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"Q");
        server(&mut s, b"G");
        assert!(!s.is_quiescent());
        client(&mut s, b"ddc");
        server(&mut s, b"C");
        assert!(!s.is_quiescent());
        server(&mut s, b"Z");
        assert!(s.is_quiescent());
    }

    /// As libpq and tokio-postgres do it: Bind, Execute, Sync (ignored in copy mode), then
    /// CopyData, CopyDone and a Sync that the server answers.
    #[test]
    fn extended_copy_in_ignores_the_sync_after_execute() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BES");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"2G");
        assert_eq!(s.outstanding(), 0);
        // The COPY's batch is open until a Sync the server reads after the copy.
        assert!(!s.is_quiescent() && s.owes_answers());
        client(&mut s, b"ddc");
        assert!(!s.is_quiescent());
        client(&mut s, b"S");
        server(&mut s, b"C");
        assert!(!s.is_quiescent());
        server(&mut s, b"Z");
        assert!(s.is_quiescent() && !s.owes_answers());
    }

    /// CopyFail in extended mode: the server discards until Sync, then answers it.
    #[test]
    fn extended_copy_fail() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"PBES");
        server(&mut s, b"12G");
        client(&mut s, b"dfS");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"E");
        assert!(!s.is_quiescent());
        server(&mut s, b"Z");
        assert!(s.is_quiescent());
    }

    /// The whole copy sent before the server's CopyInResponse arrives.
    #[test]
    fn extended_copy_in_pipelined_before_the_copy_starts() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BESdcS");
        assert_eq!(s.outstanding(), 2);
        server(&mut s, b"2G");
        assert_eq!(s.outstanding(), 1);
        // The last Sync came after CopyDone: it is answered, and it ends the batch.
        server(&mut s, b"C");
        assert!(!s.is_quiescent());
        server(&mut s, b"Z");
        assert!(s.is_quiescent());

        // Two Syncs before any data: both read in copy mode.
        client(&mut s, b"BESS");
        server(&mut s, b"2G");
        assert_eq!(s.outstanding(), 0);
        client(&mut s, b"S");
        assert_eq!(s.outstanding(), 0, "a Sync before CopyData is ignored");
        client(&mut s, b"dcS");
        server(&mut s, b"CZ");
        assert!(s.is_quiescent());
    }

    /// An Execute without a Sync (a Flush asks for the answer): the copy starts before any
    /// request is counted.
    #[test]
    fn extended_copy_in_before_any_sync() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BEH");
        server(&mut s, b"2G");
        client(&mut s, b"SdcS");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"C");
        assert!(!s.is_quiescent());
        server(&mut s, b"Z");
        assert!(s.is_quiescent());
    }

    /// A Sync among the data is answered if the data fails before the server reads it: it
    /// stays counted, and the session looks busy rather than idle too early.
    #[test]
    fn a_sync_after_copy_data_is_not_guessed_away() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BESdScS");
        server(&mut s, b"2G");
        assert_eq!(s.outstanding(), 2);
        // Here the data failed after the middle Sync was read: one answer only.
        server(&mut s, b"EZ");
        assert!(!s.is_quiescent());
        // Where the COPY started is not certain (two Executes): nothing is ignored. (Postgres
        // fails the copy on the second Bind and answers the Sync.)
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BEBES");
        server(&mut s, b"2GE");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"Z");
        assert!(s.is_quiescent());
    }

    /// A Sync sent during a simple Query's copy is ignored too; the Query is still answered.
    #[test]
    fn simple_query_copy_in_with_syncs() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"QS");
        server(&mut s, b"G");
        client(&mut s, b"Sdc");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"CZ");
        assert!(s.is_quiescent());
        // A Query that follows the copy's end is answered on its own.
        client(&mut s, b"QdcQ");
        server(&mut s, b"G");
        assert_eq!(s.outstanding(), 2);
        server(&mut s, b"CZ");
        assert!(!s.is_quiescent());
        server(&mut s, b"CZ");
        assert!(s.is_quiescent());
    }

    /// COPY TO STDOUT reads nothing from the client: its Sync is answered as usual.
    #[test]
    fn extended_copy_out() {
        let mut s = ProtocolState::new(&[]);
        client(&mut s, b"BES");
        server(&mut s, b"2Hddc");
        assert_eq!(s.outstanding(), 1);
        server(&mut s, b"CZ");
        assert!(s.is_quiescent());
    }

    /// A client pipelining without reading: the requests beyond those kept are counted, and a
    /// copy that starts behind them ignores none of its Syncs (nothing is known of them).
    #[test]
    fn requests_beyond_those_kept_are_counted() {
        let mut s = ProtocolState::new(&[]);
        for _ in 0..REQUESTS_KEPT + 2 {
            client(&mut s, b"BES");
        }
        assert_eq!(s.outstanding(), REQUESTS_KEPT + 2);
        assert_eq!(s.requests.len(), REQUESTS_KEPT);
        for _ in 0..REQUESTS_KEPT {
            server(&mut s, b"2CZ");
        }
        assert_eq!(s.outstanding(), 2);
        server(&mut s, b"2G");
        assert_eq!(s.outstanding(), 2, "the Syncs were only counted: none is guessed away");
        assert!(!s.is_quiescent());
    }
}
