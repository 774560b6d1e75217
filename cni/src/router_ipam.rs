//! The weft router's IPAM API on this node (`/ipam/*` on its loopback HTTP
//! address), as the plugin uses it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::env::Attachment;
use crate::error::PluginError;
use crate::ip_prefix::IpPrefix;

/// The router may hold an allocation up to ~20 s while the cluster agrees
/// on address space before it answers 503; wait a little longer than that.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Everything else is a local table look-up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An address the router handed out (allocate, lookup).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    pub ip: IpPrefix,
    pub gateway: IpAddr,
    pub mtu: u32,
    pub bridge: String,
}

/// `GET /ipam/status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouterStatus {
    pub ready: bool,
}

#[derive(Debug, Serialize)]
struct AttachmentBody<'a> {
    container_id: &'a str,
    ifname: &'a str,
}

impl<'a> From<&'a Attachment> for AttachmentBody<'a> {
    fn from(attachment: &'a Attachment) -> Self {
        AttachmentBody { container_id: &attachment.container_id, ifname: &attachment.ifname }
    }
}

#[derive(Debug, Serialize)]
struct GcBody<'a> {
    valid: Vec<AttachmentBody<'a>>,
}

#[derive(Debug, Deserialize)]
struct Released {
    released: u64,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Debug)]
pub struct RouterIpam {
    addr: SocketAddr,
    agent: ureq::Agent,
}

/// A failed exchange, before it is given the words of the command at hand.
enum Failure {
    /// No answer: connection refused, timeout, reset.
    Unreachable(String),
    /// An HTTP error status with the router's `error` text.
    Status(u16, String),
    Garbled(PluginError),
}

impl RouterIpam {
    pub fn new(addr: SocketAddr) -> RouterIpam {
        let agent = ureq::AgentBuilder::new().timeout_connect(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT).build();
        RouterIpam { addr, agent }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn allocate(&self, attachment: &Attachment) -> Result<Lease, PluginError> {
        let body = json_body(&AttachmentBody::from(attachment));
        let request = self.agent.post(&self.url("/ipam/allocate")).timeout(ALLOCATE_TIMEOUT);
        self.exchange(request, Some(&body)).map_err(|f| self.failure(f, "allocate"))
    }

    /// Returns how many addresses were freed (0 if none was held).
    pub fn release(&self, attachment: &Attachment) -> Result<u64, PluginError> {
        let body = json_body(&AttachmentBody::from(attachment));
        let released: Released = self
            .exchange(self.agent.post(&self.url("/ipam/release")), Some(&body))
            .map_err(|f| self.failure(f, "release"))?;
        Ok(released.released)
    }

    /// The attachment's current lease; `None` if the router holds none.
    pub fn lookup(&self, attachment: &Attachment) -> Result<Option<Lease>, PluginError> {
        let request = self
            .agent
            .get(&self.url("/ipam/lookup"))
            .query("container_id", &attachment.container_id)
            .query("ifname", &attachment.ifname);
        match self.exchange(request, None) {
            Ok(lease) => Ok(Some(lease)),
            Err(Failure::Status(404, _)) => Ok(None),
            Err(failure) => Err(self.failure(failure, "lookup")),
        }
    }

    pub fn gc(&self, valid: &[Attachment]) -> Result<u64, PluginError> {
        let body = json_body(&GcBody { valid: valid.iter().map(AttachmentBody::from).collect() });
        let released: Released =
            self.exchange(self.agent.post(&self.url("/ipam/gc")), Some(&body)).map_err(|f| self.failure(f, "gc"))?;
        Ok(released.released)
    }

    /// STATUS wants "not available" (50) for every way the router can fail
    /// to serve, so this one keeps the raw failure for its caller's words.
    pub fn status(&self) -> Result<RouterStatus, String> {
        self.exchange(self.agent.get(&self.url("/ipam/status")), None).map_err(|failure| match failure {
            Failure::Unreachable(detail) => {
                format!("the weft router's API at {} does not answer ({detail})", self.addr)
            }
            Failure::Status(status, message) => format!("the weft router answered HTTP {status}: {message}"),
            Failure::Garbled(err) => err.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn exchange<T: for<'de> Deserialize<'de>>(&self, request: ureq::Request, body: Option<&str>) -> Result<T, Failure> {
        let response = match body {
            Some(body) => request.set("content-type", "application/json").send_string(body),
            None => request.call(),
        };
        let response = match response {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<ErrorBody>(&text).map(|e| e.error).unwrap_or(text);
                return Err(Failure::Status(status, message));
            }
            Err(ureq::Error::Transport(transport)) => return Err(Failure::Unreachable(transport.to_string())),
        };
        let what = format!("the weft router's answer from {}", self.addr);
        let text =
            response.into_string().map_err(|e| Failure::Garbled(PluginError::io(format!("reading {what}"), e)))?;
        serde_json::from_str(&text).map_err(|e| Failure::Garbled(PluginError::decode(what, e)))
    }

    fn failure(&self, failure: Failure, what: &'static str) -> PluginError {
        match failure {
            Failure::Unreachable(detail) => PluginError::TryAgainLater(format!(
                "cannot reach the weft router's IPAM at {} to {what} ({detail}); is the weft router running on this node? \
                 (its API address is the `httpAddr` configuration key)",
                self.addr
            )),
            Failure::Status(503, message) => {
                PluginError::TryAgainLater(format!("the weft router's IPAM is not ready to {what} yet: {message}"))
            }
            Failure::Status(status, message) => {
                PluginError::RouterRefused { addr: self.addr.to_string(), what, status, message }
            }
            Failure::Garbled(err) => err,
        }
    }
}

fn json_body<T: Serialize>(body: &T) -> String {
    // Serialising plain structs of strings cannot fail.
    serde_json::to_string(body).unwrap_or_default()
}
