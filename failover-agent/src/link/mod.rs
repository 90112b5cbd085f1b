//! Link state of the uplinks, from rtnetlink: presence, administrative
//! state and carrier. The only code in the agent that touches netlink.
//!
//! [`watch`] subscribes to link events first and dumps the links second, so
//! no change falls between the dump and the events. The changes go to the
//! agent over a bounded channel ([`EVENTS_QUEUED`]): when it is full, an
//! event is dropped and every link is dumped anew (and sent) as soon as
//! there is room again, so the agent ends up with each link's latest state,
//! including links created or deleted meanwhile.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload};
use tokio::sync::mpsc;
use tracing::warn;

/// Link changes queued for the agent at most (a few hundred bytes each).
pub const EVENTS_QUEUED: usize = 1024;

/// The state of a link, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Administratively up, with carrier (`IFF_UP` and `IFF_LOWER_UP`).
    Up,
    /// Present, but down or without carrier.
    Down,
    /// The interface is gone.
    Gone,
}

/// One link's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    pub state: LinkState,
}

/// Errors at the netlink boundary.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket subscribed to link events")]
    Subscribe(#[source] std::io::Error),
    #[error("dumping the links over netlink")]
    Dump(#[source] rtnetlink::Error),
}

/// The link state in a `RTM_NEWLINK` / `RTM_DELLINK` message.
pub fn link_event(msg: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
    let mut ifname = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => ifname = Some(name.clone()),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(bytes);
                mac = Some(m);
            }
            _ => {}
        }
    }
    let flags = msg.header.flags;
    let state = if deleted {
        LinkState::Gone
    } else if flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp) {
        LinkState::Up
    } else {
        LinkState::Down
    };
    Some(LinkEvent { ifname: ifname?, ifindex: msg.header.index, mac, state })
}

/// Reads one link's state on request, and sends it down the channel of
/// changes. Reading a device's link state also makes the kernel deliver the
/// change it holds back for it (linkwatch, up to a second for a physical
/// NIC): the agent reads an uplink this way when the kernel's fast rule
/// reports its carrier lost, and every probe round when the kernel cannot
/// read carrier itself.
#[derive(Clone, Debug)]
pub struct LinkQuery {
    handle: rtnetlink::Handle,
    tx: mpsc::Sender<LinkEvent>,
}

impl LinkQuery {
    /// Reads link `ifindex` now (`RTM_GETLINK` for that device) and sends
    /// its state down the channel of changes. Gone links send nothing.
    pub async fn refresh(&self, ifindex: u32) {
        let mut stream = self.handle.link().get().match_index(ifindex).execute();
        if let Ok(Some(msg)) = stream.try_next().await
            && let Some(event) = link_event(&msg, false)
        {
            let _ = self.tx.send(event).await;
        }
    }
}

/// What [`watch`] returns: the dump, the changes that follow, and a way to
/// read one link anew.
pub struct LinkWatch {
    pub dump: Vec<LinkEvent>,
    pub events: mpsc::Receiver<LinkEvent>,
    pub query: LinkQuery,
}

/// Every link's state, dumped.
async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<LinkEvent>, LinkError> {
    Ok(handle
        .link()
        .get()
        .execute()
        .map_ok(|msg| link_event(&msg, false))
        .try_collect::<Vec<_>>()
        .await
        .map_err(LinkError::Dump)?
        .into_iter()
        .flatten()
        .collect())
}

/// Sends each change to `tx` without waiting; when `tx` is full the change
/// is dropped, and once there is room every link is dumped anew (`redump`)
/// and sent (changes that arrive meanwhile wait in the socket, and come
/// after). Returns when the changes end or the receiver is gone.
async fn forward<S, D, F>(mut changes: S, mut redump: D, tx: mpsc::Sender<LinkEvent>)
where
    S: futures::Stream<Item = LinkEvent> + Unpin,
    D: FnMut() -> F,
    F: Future<Output = Result<Vec<LinkEvent>, LinkError>>,
{
    let mut lost = false;
    loop {
        let event = tokio::select! {
            e = changes.next() => e,
            permit = tx.reserve(), if lost => {
                if permit.is_err() {
                    return; // the agent is gone
                }
                drop(permit);
                match redump().await {
                    Ok(links) => {
                        lost = false;
                        for event in links {
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => warn!(error = %anyhow::Error::from(e), "link events were dropped; dumping the links anew failed (the uplinks are read anew every second)"),
                }
                continue;
            }
        };
        let Some(event) = event else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !lost {
                    warn!(
                        "{} link events queued: dropping; every link is dumped anew when there is room",
                        tx.max_capacity()
                    );
                }
                lost = true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Subscribes to link events, then dumps every link. Returns the dump and a
/// channel of the changes that follow. Must run inside a tokio runtime.
pub async fn watch() -> Result<LinkWatch, LinkError> {
    let (conn, handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(LinkError::Subscribe)?;
    tokio::spawn(conn);
    let first = dump(&handle).await?;
    let (tx, rx) = mpsc::channel(EVENTS_QUEUED);
    let query = LinkQuery { handle: handle.clone(), tx: tx.clone() };
    let changes = messages.filter_map(|(message, _)| {
        std::future::ready(match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => link_event(l, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => link_event(l, true),
            _ => None,
        })
    });
    tokio::spawn(forward(
        Box::pin(changes),
        move || {
            let handle = handle.clone();
            async move { dump(&handle).await }
        },
        tx,
    ));
    Ok(LinkWatch { dump: first, events: rx, query })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(flags: LinkFlags, name: Option<&str>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = flags;
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        m.attributes.push(LinkAttribute::Address(vec![2, 0, 0, 0, 1, 1]));
        m
    }

    #[test]
    fn up_needs_admin_up_and_carrier() {
        let e = link_event(&msg(LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running, Some("eth1")), false).unwrap();
        assert_eq!(
            e,
            LinkEvent { ifname: "eth1".into(), ifindex: 7, mac: Some([2, 0, 0, 0, 1, 1]), state: LinkState::Up }
        );
        let no_carrier = link_event(&msg(LinkFlags::Up, Some("eth1")), false).unwrap();
        assert_eq!(no_carrier.state, LinkState::Down);
        let admin_down = link_event(&msg(LinkFlags::LowerUp, Some("eth1")), false).unwrap();
        assert_eq!(admin_down.state, LinkState::Down);
    }

    #[test]
    fn deleted_links_are_gone_and_nameless_messages_ignored() {
        let e = link_event(&msg(LinkFlags::Up | LinkFlags::LowerUp, Some("eth1")), true).unwrap();
        assert_eq!(e.state, LinkState::Gone);
        assert_eq!(link_event(&msg(LinkFlags::Up, None), false), None);
    }

    fn ev(ifindex: u32, state: LinkState) -> LinkEvent {
        LinkEvent { ifname: format!("d{ifindex}"), ifindex, mac: None, state }
    }

    #[tokio::test]
    async fn changes_over_the_bound_are_dropped_and_every_link_dumped_anew() {
        let (source, changes) = futures::channel::mpsc::unbounded();
        let (tx, mut rx) = mpsc::channel(4);
        let dumps = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = dumps.clone();
        // The kernel's truth after the burst: every link up.
        let redump = move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok((1..=10).map(|i| ev(i, LinkState::Up)).collect()))
        };
        tokio::spawn(forward(changes, redump, tx));
        for i in 1..=10 {
            source.unbounded_send(ev(i, LinkState::Up)).unwrap();
        }
        let mut seen = std::collections::BTreeMap::new();
        let mut received = 0;
        while let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await {
            received += 1;
            seen.insert(e.ifindex, e.state);
        }
        assert_eq!(dumps.load(std::sync::atomic::Ordering::SeqCst), 1, "one dump after the overflow");
        assert_eq!(received, 4 + 10, "the 4 queued, then the dump");
        assert_eq!(seen, (1..=10).map(|i| (i, LinkState::Up)).collect(), "every link's last state arrived");
        // Changes after the dump come after it, and no dump without an overflow.
        source.unbounded_send(ev(3, LinkState::Down)).unwrap();
        assert_eq!(rx.recv().await, Some(ev(3, LinkState::Down)));
        assert_eq!(dumps.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
