//! The agent's history: events numbered in order (`failover-agent events`,
//! `--follow` resumes by sequence number), and since when each open alarm
//! has been raised.

use std::{
    collections::{HashMap, VecDeque},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast;

use crate::{
    control::{Event, EventKind},
    failover::Alarm,
};

/// How many events `failover-agent events` can look back on.
pub const EVENT_HISTORY: usize = 1000;

/// Now, in Unix milliseconds.
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Events and open alarms.
#[derive(Debug)]
pub struct Journal {
    events: VecDeque<Event>,
    seq: u64,
    tx: broadcast::Sender<Event>,
    /// Since when each of the core's open alarms is raised (Unix ms).
    pub alarm_since: HashMap<Alarm, u64>,
    /// Since when each bridge's "OVS unreachable" alarm is raised.
    pub ovs_alarm_since: HashMap<String, u64>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    pub fn new() -> Self {
        Self {
            events: VecDeque::new(),
            seq: 0,
            tx: broadcast::channel(256).0,
            alarm_since: HashMap::new(),
            ovs_alarm_since: HashMap::new(),
        }
    }

    /// Records an event and hands it to the followers.
    pub fn record(&mut self, kind: EventKind, group: Option<&str>, uplink: Option<&str>, message: String) {
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            at_unix_ms: unix_ms_now(),
            kind,
            group: group.map(str::to_string),
            uplink: uplink.map(str::to_string),
            message,
        };
        let _ = self.tx.send(event.clone());
        self.events.push_back(event);
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
    }

    /// The `limit` most recent events, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let skip = self.events.len().saturating_sub(limit.min(EVENT_HISTORY));
        self.events.iter().skip(skip).cloned().collect()
    }

    /// Where new events are broadcast (for `events --follow`).
    pub fn sender(&self) -> broadcast::Sender<Event> {
        self.tx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_and_bounded() {
        let mut j = Journal::new();
        let mut rx = j.sender().subscribe();
        j.record(EventKind::Agent, None, None, "first".into());
        assert_eq!(rx.try_recv().map(|e| (e.seq, e.message)).ok(), Some((1, "first".to_string())));
        for i in 1..(EVENT_HISTORY + 5) {
            j.record(EventKind::Agent, None, None, format!("e{i}"));
        }
        let recent = j.recent(3);
        assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1003, 1004, 1005]);
        assert_eq!(j.recent(usize::MAX).len(), EVENT_HISTORY);
    }
}
