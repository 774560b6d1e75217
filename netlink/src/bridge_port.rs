//! Per-port switches of a Linux bridge (`ip link set DEV type bridge_slave
//! ...`, `bridge link set`).

use rtnetlink::packet_route::link::{InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::LinkBridgePort;

use super::{Netlink, NetlinkError};

/// Bridge-port flags; `None` leaves a flag as it is when setting, and
/// means "not reported" when reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePortOptions {
    /// The bridge never forwards between two isolated ports (frames still
    /// flow between an isolated port and any non-isolated one).
    pub isolated: Option<bool>,
    /// Learn source MACs of frames arriving on the port into the bridge FDB.
    pub learning: Option<bool>,
    /// Let a frame go back out the port it came in on (how a pod reaches
    /// itself through a service IP).
    pub hairpin: Option<bool>,
}

impl BridgePortOptions {
    /// The request, or `None` when there is nothing to change.
    fn message(&self, index: u32) -> Option<LinkMessage> {
        if *self == BridgePortOptions::default() {
            return None;
        }
        let mut builder = LinkBridgePort::new(index);
        if let Some(on) = self.isolated {
            builder = builder.isolated(on);
        }
        if let Some(on) = self.learning {
            builder = builder.learning(on);
        }
        if let Some(on) = self.hairpin {
            builder = builder.hairpin(on);
        }
        Some(builder.build())
    }

    /// `None` unless the message describes a bridge port.
    fn parse(message: &LinkMessage) -> Option<BridgePortOptions> {
        let data = message.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::PortData(InfoPortData::BridgePort(data)) => Some(data),
                _ => None,
            }),
            _ => None,
        })?;
        let mut options = BridgePortOptions::default();
        for attribute in data {
            match attribute {
                InfoBridgePort::Isolated(on) => options.isolated = Some(*on),
                InfoBridgePort::Learning(on) => options.learning = Some(*on),
                InfoBridgePort::HairpinMode(on) => options.hairpin = Some(*on),
                _ => {}
            }
        }
        Some(options)
    }
}

impl std::fmt::Display for BridgePortOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = [("isolated", self.isolated), ("learning", self.learning), ("hairpin", self.hairpin)];
        let mut first = true;
        for (name, value) in flags {
            if let Some(on) = value {
                let sep = if first { "" } else { " " };
                write!(f, "{sep}{name} {}", if on { "on" } else { "off" })?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Netlink {
    /// Changes the flags that `options` sets on bridge port `index`; the
    /// link must already be enslaved to a bridge.
    pub async fn set_bridge_port(&self, index: u32, options: &BridgePortOptions) -> Result<(), NetlinkError> {
        let Some(message) = options.message(index) else {
            return Ok(());
        };
        self.handle
            .link()
            .set_port(message)
            .execute()
            .await
            .map_err(|err| NetlinkError::request(format!("set {options} on bridge port ifindex {index}"), err))
    }

    /// Hairpin mode on a bridge port (see [`BridgePortOptions::hairpin`]).
    pub async fn set_bridge_port_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        self.set_bridge_port(index, &BridgePortOptions { hairpin: Some(on), ..BridgePortOptions::default() }).await
    }

    /// The current flags of link `index`; `None` if it is not a bridge port.
    pub async fn bridge_port_options(&self, index: u32) -> Result<Option<BridgePortOptions>, NetlinkError> {
        Ok(BridgePortOptions::parse(&self.existing_message(index).await?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_given_flags_are_sent_and_read_back() {
        let options = BridgePortOptions { isolated: Some(true), learning: Some(false), hairpin: None };
        let message = options.message(5).unwrap();
        assert_eq!(message.header.index, 5);
        assert_eq!(BridgePortOptions::parse(&message), Some(options));
    }

    #[test]
    fn nothing_to_set_sends_nothing() {
        assert_eq!(BridgePortOptions::default().message(5), None);
    }

    #[test]
    fn non_port_has_no_options() {
        assert_eq!(BridgePortOptions::parse(&LinkMessage::default()), None);
    }

    #[test]
    fn display_names_the_flags_set() {
        let options = BridgePortOptions { isolated: Some(true), learning: None, hairpin: Some(false) };
        assert_eq!(options.to_string(), "isolated on hairpin off");
    }
}
