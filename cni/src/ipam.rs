//! Where a pod's addresses come from: the weft router (default) or a
//! delegated IPAM plugin. Both answer in the same terms.

use crate::config::{IpamConf, NetConf};
use crate::delegate::Delegate;
use crate::env::{Attachment, CniEnv, Command};
use crate::error::PluginError;
use crate::ip_prefix::IpPrefix;
use crate::result::{CniResult, Dns, IpConfig, Route};
use crate::router_ipam::RouterIpam;

/// What IPAM gave an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Without `interface` indexes; ADD fills them in.
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The router says which MTU and bridge its overlay uses; a delegated
    /// plugin knows neither.
    pub mtu: Option<u32>,
    pub bridge: Option<String>,
}

#[derive(Debug)]
pub enum Ipam<'a> {
    Router(RouterIpam),
    Plugin { delegate: Delegate, stdin: &'a [u8] },
}

impl<'a> Ipam<'a> {
    /// `stdin` is the configuration as received, passed on verbatim to a
    /// delegated plugin.
    pub fn new(conf: &NetConf, env: &CniEnv, stdin: &'a [u8]) -> Result<Ipam<'a>, PluginError> {
        Ok(match &conf.ipam {
            IpamConf::Router => Ipam::Router(RouterIpam::new(conf.router)),
            IpamConf::Plugin(name) => Ipam::Plugin { delegate: Delegate::find(name, &env.plugin_dirs()?)?, stdin },
        })
    }

    pub fn allocate(&self, attachment: &Attachment) -> Result<Allocation, PluginError> {
        match self {
            Ipam::Router(router) => {
                let lease = router.allocate(attachment)?;
                Ok(Allocation {
                    ips: vec![IpConfig { interface: None, address: lease.ip, gateway: Some(lease.gateway) }],
                    // Flat L2 network: everything beyond the range's own
                    // subnet goes via the node's bridge address.
                    routes: vec![Route { dst: IpPrefix::default_route_for(lease.gateway), gw: Some(lease.gateway) }],
                    dns: Dns::default(),
                    mtu: Some(lease.mtu),
                    bridge: Some(lease.bridge),
                })
            }
            Ipam::Plugin { delegate, stdin } => {
                let answer = delegate.run(Command::Add, stdin)?.ok_or_else(|| PluginError::Delegated {
                    plugin: delegate.name().to_owned(),
                    code: 999,
                    msg: "ADD printed no result".to_owned(),
                    details: String::new(),
                })?;
                let result =
                    CniResult::parse(answer).map_err(|e| PluginError::decode("the IPAM plugin's ADD result", e))?;
                if result.ips.is_empty() {
                    return Err(PluginError::InvalidConfig("the IPAM plugin allocated no addresses".to_owned()));
                }
                let ips = result.ips.into_iter().map(|ip| IpConfig { interface: None, ..ip }).collect();
                Ok(Allocation { ips, routes: result.routes, dns: result.dns, mtu: None, bridge: None })
            }
        }
    }

    /// Frees the attachment's addresses; freeing nothing is success.
    pub fn release(&self, attachment: &Attachment) -> Result<(), PluginError> {
        match self {
            Ipam::Router(router) => router.release(attachment).map(drop),
            Ipam::Plugin { delegate, stdin } => delegate.run(Command::Del, stdin).map(drop),
        }
    }

    /// CHECK: IPAM still holds what the previous ADD reported for this
    /// attachment. Returns the router's bridge, if the router is the IPAM.
    pub fn check(&self, attachment: &Attachment, reported: &[&IpConfig]) -> Result<Option<String>, PluginError> {
        match self {
            Ipam::Router(router) => {
                let lease = router.lookup(attachment)?.ok_or_else(|| {
                    PluginError::CheckFailed(format!(
                        "the weft router holds no address for container {} interface {}",
                        attachment.container_id, attachment.ifname
                    ))
                })?;
                if !reported.iter().any(|ip| ip.address == lease.ip) {
                    return Err(PluginError::CheckFailed(format!(
                        "the weft router has {} for this attachment, which the previous result does not list",
                        lease.ip
                    )));
                }
                Ok(Some(lease.bridge))
            }
            Ipam::Plugin { delegate, stdin } => delegate.run(Command::Check, stdin).map(|_| None),
        }
    }

    /// STATUS: can IPAM serve an ADD now?
    pub fn status(&self) -> Result<(), PluginError> {
        match self {
            Ipam::Router(router) => match router.status() {
                Ok(status) if status.ready => Ok(()),
                Ok(_) => Err(PluginError::NotAvailable(format!(
                    "the weft router at {} has no address space yet (its IPAM is not ready)",
                    router.addr()
                ))),
                Err(problem) => Err(PluginError::NotAvailable(problem)),
            },
            // Finding the plugin was the check; older IPAM plugins know no STATUS.
            Ipam::Plugin { .. } => Ok(()),
        }
    }

    /// GC: frees every allocation not in `valid`.
    pub fn gc(&self, valid: &[Attachment]) -> Result<(), PluginError> {
        match self {
            Ipam::Router(router) => router.gc(valid).map(drop),
            Ipam::Plugin { delegate, stdin } => delegate.run(Command::Gc, stdin).map(drop),
        }
    }
}
