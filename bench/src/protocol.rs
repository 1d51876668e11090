//! What the coordinator and its worker processes say to each other: JSON lines, worker
//! events on the worker's stdout, commands on its stdin.
//!
//! Plain JSON lines keep the workers debuggable by hand (`callhome-bench worker ...` prints
//! them) and need no framing beyond `\n`. Nothing else may go to a worker's stdout; its
//! diagnostics go to stderr.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

/// A worker's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Every client has either connected and is waiting, or given up.
    Ready {
        ready: u64,
        errors: u64,
        /// From the worker's start to the last client settling.
        millis: u64,
    },
    /// Deliveries since the last batch.
    Deliveries { records: Vec<Delivery> },
    /// The worker's totals; it exits after this.
    Done { counts: ClientCounts },
}

/// One delivery, as `[id index, round, receive time in ns since the epoch]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery(pub usize, pub u32, pub u64);

/// A coordinator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Report the totals and exit (closing stdin means the same).
    Stop,
}

/// What a worker's clients saw, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCounts {
    /// Clients that connected and were waiting.
    pub ready: u64,
    /// Clients that never got to wait.
    pub not_ready: u64,
    /// Connects that failed (refused, timed out, no ports).
    pub failed_connects: u64,
    /// Connections that ended before their answer did.
    pub early_closes: u64,
    /// Answers that were not 200 news or a 204 "poll again" (and refused streams).
    pub unexpected_answers: u64,
    /// Long polls re-issued after a 204 (Nchan: 304 or 408) with the same cursor.
    pub repolls: u64,
    /// Idle keep-alive connections the server closed, reopened without counting an error.
    pub reconnects: u64,
    /// Values received that were the client's own and new.
    pub deliveries: u64,
    /// Values received again (a round at or below one already seen).
    pub duplicates: u64,
    /// Values that were not the client's own id's info.
    pub wrong: u64,
}

impl ClientCounts {
    /// Every error a client counted: failed connects, early closes, unexpected answers.
    pub fn errors(&self) -> u64 {
        self.failed_connects + self.early_closes + self.unexpected_answers
    }
}

impl AddAssign for ClientCounts {
    fn add_assign(&mut self, other: Self) {
        self.ready += other.ready;
        self.not_ready += other.not_ready;
        self.failed_connects += other.failed_connects;
        self.early_closes += other.early_closes;
        self.unexpected_answers += other.unexpected_answers;
        self.repolls += other.repolls;
        self.reconnects += other.reconnects;
        self.deliveries += other.deliveries;
        self.duplicates += other.duplicates;
        self.wrong += other.wrong;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_each() {
        let ready = WorkerEvent::Ready {
            ready: 9,
            errors: 1,
            millis: 20,
        };
        let line = serde_json::to_string(&ready).expect("serialises");
        assert_eq!(
            line,
            r#"{"event":"ready","ready":9,"errors":1,"millis":20}"#
        );
        let batch = WorkerEvent::Deliveries {
            records: vec![Delivery(3, 1, 1_764_313_200_000_000_000)],
        };
        let line = serde_json::to_string(&batch).expect("serialises");
        assert_eq!(
            line,
            r#"{"event":"deliveries","records":[[3,1,1764313200000000000]]}"#
        );
        assert_eq!(
            serde_json::from_str::<WorkerEvent>(&line).expect("parses"),
            batch
        );
        let stop: Command = serde_json::from_str(r#"{"cmd":"stop"}"#).expect("parses");
        assert_eq!(stop, Command::Stop);
    }
}
