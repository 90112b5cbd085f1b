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

/// Subscribes to link events, then dumps every link. Returns the dump and a
/// channel of the changes that follow. Must run inside a tokio runtime.
pub async fn watch() -> Result<LinkWatch, LinkError> {
    let (conn, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(LinkError::Subscribe)?;
    tokio::spawn(conn);
    let first = dump(&handle).await?;
    let (tx, rx) = mpsc::channel(EVENTS_QUEUED);
    let query = LinkQuery { handle: handle.clone(), tx: tx.clone() };
    tokio::spawn(async move {
        // An event was dropped (the channel full): dump anew once there is room.
        let mut lost = false;
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                permit = tx.reserve(), if lost => {
                    if permit.is_err() {
                        return; // the agent is gone
                    }
                    drop(permit);
                    // Events that arrive meanwhile wait in the socket and come after.
                    match dump(&handle).await {
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
            let Some((message, _)) = message else { return };
            let event = match &message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => link_event(l, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => link_event(l, true),
                _ => None,
            };
            let Some(event) = event else { continue };
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !lost {
                        warn!(
                            "{EVENTS_QUEUED} link events queued: dropping; every link is dumped anew when there is room"
                        );
                    }
                    lost = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
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
}
