//! The egress policy: which network addresses sources and destinations may connect to.
//!
//! It is checked on the address of every connection, after name resolution: HTTP clients resolve
//! names through [`EgressResolver`], which drops refused addresses before connecting, and check the
//! peer of every connection they open with [`EgressLayer`], which also covers hosts written as IP
//! addresses (those are never resolved). A name that resolves to a refused address, now or after
//! its DNS record changed, never reaches it.
//!
//! An address is judged by the first rule that matches it:
//! 1. the operator's deny list (`--egress-deny CIDR`): refused;
//! 2. the operator's allow list (`--egress-allow CIDR`): allowed;
//! 3. the built-in refusals: link-local addresses (169.254.0.0/16 and fe80::/10, where cloud
//!    metadata services answer) always; in controller mode also loopback and this host
//!    (127.0.0.0/8, ::1, 0.0.0.0/8, ::) and the Kubernetes API server's addresses;
//! 4. anything else: allowed.
//!
//! An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is judged as the IPv4 address it holds.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use ipnet::IpNet;

/// Most addresses of one name that are considered.
const MAX_ADDRESSES: usize = 64;
/// How deep an error's chain of causes is searched for a refusal.
const MAX_ERROR_DEPTH: usize = 32;

type BoxError = Box<dyn Error + Send + Sync>;

/// A connection the policy refused: to which address, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} is refused by the egress policy ({rule})")]
pub struct EgressRefused {
    /// The address that was refused.
    pub address: IpAddr,
    /// The rule that refused it, e.g. `link-local` or `--egress-deny 10.0.0.0/8`.
    pub rule: String,
}

/// Why a host could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Every address of the host is refused by the policy.
    #[error(transparent)]
    Refused(#[from] EgressRefused),
    /// The host name could not be resolved.
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        /// The host name.
        host: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Which addresses connections may go to, checked after name resolution. An address is judged by
/// the first rule that matches: the deny list (refused), the allow list (allowed), the built-in
/// refusals (link-local addresses always; in controller mode also loopback, this host and the
/// Kubernetes API server's addresses), else allowed.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    refused: Vec<(IpNet, &'static str)>,
}

impl Default for EgressPolicy {
    /// [`local`](Self::local).
    fn default() -> Self {
        EgressPolicy::local()
    }
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap_or_else(|_| unreachable!("{text} is a valid CIDR"))
}

impl EgressPolicy {
    /// The policy of `ktrigger run`: link-local addresses refused, loopback allowed.
    pub fn local() -> Self {
        let refused = vec![(net("169.254.0.0/16"), "link-local"), (net("fe80::/10"), "link-local")];
        EgressPolicy { deny: Vec::new(), allow: Vec::new(), refused }
    }

    /// The policy of `ktrigger controller`: link-local, loopback, this host and `api_server` (the
    /// Kubernetes API server's addresses) refused.
    pub fn shared(api_server: &[IpAddr]) -> Self {
        let mut policy = EgressPolicy::local();
        for (text, rule) in
            [("127.0.0.0/8", "loopback"), ("::1/128", "loopback"), ("0.0.0.0/8", "this host"), ("::/128", "this host")]
        {
            policy.refused.push((net(text), rule));
        }
        for address in api_server {
            policy.refused.push((IpNet::from(address.to_canonical()), "the Kubernetes API server"));
        }
        policy
    }

    /// This policy with the operator's lists: `deny` refused before anything else, then `allow`
    /// allowed before the built-in refusals.
    pub fn with_rules(mut self, allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        self.allow = allow;
        self.deny = deny;
        self
    }

    /// Whether a connection to `address` may be made.
    pub fn check(&self, address: IpAddr) -> Result<(), EgressRefused> {
        let address = address.to_canonical();
        if let Some(net) = self.deny.iter().find(|net| net.contains(&address)) {
            return Err(EgressRefused { address, rule: format!("--egress-deny {net}") });
        }
        if self.allow.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        match self.refused.iter().find(|(net, _)| net.contains(&address)) {
            Some((_, rule)) => Err(EgressRefused { address, rule: (*rule).to_string() }),
            None => Ok(()),
        }
    }

    /// The allowed addresses of `host` (a name or an IP address) at `port`; refused when every
    /// address it resolves to is refused.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let lookup = |source| EgressError::Lookup { host: host.to_string(), source };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut allowed = Vec::new();
        let mut refusal = None;
        for address in tokio::net::lookup_host((host, port)).await.map_err(lookup)?.take(MAX_ADDRESSES) {
            match self.check(address.ip()) {
                Ok(()) => allowed.push(address),
                Err(refused) => refusal = refusal.or(Some(refused)),
            }
        }
        match (allowed.is_empty(), refusal) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(refused.into()),
            (true, None) => Err(lookup(std::io::Error::other("no address found"))),
        }
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.0.0.1`) for the
/// `--egress-allow` and `--egress-deny` flags.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or an IP address"))
}

/// The refusal that caused `error`, if one did: for saying why a request failed.
pub fn find_refusal<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a EgressRefused> {
    let mut current = Some(error);
    for _ in 0..MAX_ERROR_DEPTH {
        let error = current?;
        if let Some(refused) = error.downcast_ref::<EgressRefused>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

/// A DNS resolver for `reqwest` that hands out only the addresses the policy allows.
#[derive(Debug, Clone)]
pub struct EgressResolver(pub Arc<EgressPolicy>);

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            // Port 0: the client puts in the port of the URL.
            match policy.resolve(name.as_str(), 0).await {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs),
                Err(EgressError::Refused(refused)) => Err(Box::new(refused) as BoxError),
                Err(error) => Err(Box::new(error) as BoxError),
            }
        })
    }
}

/// A `reqwest` connector layer that closes every new connection whose peer address the policy
/// refuses, before anything is sent on it. Pass it to `ClientBuilder::connector_layer`.
#[derive(Debug, Clone)]
pub struct EgressLayer(pub Arc<EgressPolicy>);

impl<S> tower_layer::Layer<S> for EgressLayer {
    type Service = EgressConnector<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EgressConnector { inner, policy: self.0.clone() }
    }
}

/// The connector made by [`EgressLayer`].
#[derive(Debug, Clone)]
pub struct EgressConnector<S> {
    inner: S,
    policy: Arc<EgressPolicy>,
}

impl<S, Target> tower_service::Service<Target> for EgressConnector<S>
where
    S: tower_service::Service<Target>,
    S::Response: Connection + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Target) -> Self::Future {
        let connecting = self.inner.call(target);
        let policy = self.policy.clone();
        Box::pin(async move {
            let connection = connecting.await.map_err(Into::into)?;
            let mut extras = http::Extensions::new();
            connection.connected().get_extras(&mut extras);
            let peer = extras.get::<HttpInfo>().map(HttpInfo::remote_addr).ok_or(UnknownPeer)?;
            policy.check(peer.ip())?;
            Ok(connection)
        })
    }
}

/// A connection whose peer address could not be read, so the policy could not judge it.
#[derive(Debug)]
struct UnknownPeer;

impl fmt::Display for UnknownPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the address of the connection is unknown, so the egress policy refuses it")
    }
}

impl Error for UnknownPeer {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn rule(policy: &EgressPolicy, address: &str) -> Option<String> {
        policy.check(ip(address)).err().map(|refused| refused.rule)
    }

    #[test]
    fn controller_refuses_metadata_loopback_this_host_and_the_api_server() {
        let policy = EgressPolicy::shared(&[ip("10.96.0.1")]);
        assert_eq!(rule(&policy, "169.254.169.254").as_deref(), Some("link-local"));
        assert_eq!(rule(&policy, "fe80::1").as_deref(), Some("link-local"));
        assert_eq!(rule(&policy, "127.0.0.1").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "127.8.9.10").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "::1").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "0.0.0.0").as_deref(), Some("this host"));
        assert_eq!(rule(&policy, "::").as_deref(), Some("this host"));
        assert_eq!(rule(&policy, "10.96.0.1").as_deref(), Some("the Kubernetes API server"));
        for allowed in ["10.96.0.2", "8.8.8.8", "192.168.1.1", "2001:db8::1", "169.253.255.255", "fec0::1"] {
            assert_eq!(rule(&policy, allowed), None, "{allowed}");
        }
    }

    #[test]
    fn run_allows_loopback_but_not_link_local() {
        let policy = EgressPolicy::local();
        assert_eq!(rule(&policy, "127.0.0.1"), None);
        assert_eq!(rule(&policy, "::1"), None);
        assert_eq!(rule(&policy, "169.254.169.254").as_deref(), Some("link-local"));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_judged_as_ipv4() {
        let policy = EgressPolicy::shared(&[ip("::ffff:10.96.0.1")]);
        assert_eq!(rule(&policy, "::ffff:169.254.169.254").as_deref(), Some("link-local"));
        assert_eq!(rule(&policy, "::ffff:127.0.0.1").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "10.96.0.1").as_deref(), Some("the Kubernetes API server"));
        let denied = EgressPolicy::local().with_rules(vec![], vec![parse_cidr("10.0.0.0/8").unwrap()]);
        let refused = denied.check(ip("::ffff:10.1.2.3")).unwrap_err();
        assert_eq!(refused.address, ip("10.1.2.3"));
        let allowed = EgressPolicy::shared(&[]).with_rules(vec![parse_cidr("127.0.0.1/32").unwrap()], vec![]);
        assert_eq!(rule(&allowed, "::ffff:127.0.0.1"), None);
    }

    #[test]
    fn deny_wins_over_allow_and_allow_wins_over_built_in_refusals() {
        let policy = EgressPolicy::shared(&[ip("10.96.0.1")]).with_rules(
            vec![parse_cidr("127.0.0.1/32").unwrap(), parse_cidr("10.0.0.0/8").unwrap()],
            vec![parse_cidr("10.1.0.0/16").unwrap()],
        );
        assert_eq!(rule(&policy, "127.0.0.1"), None, "allowed by the operator");
        assert_eq!(rule(&policy, "127.0.0.2").as_deref(), Some("loopback"), "outside the allowed /32");
        assert_eq!(rule(&policy, "10.1.2.3").as_deref(), Some("--egress-deny 10.1.0.0/16"));
        assert_eq!(rule(&policy, "10.2.0.1"), None);
        assert_eq!(rule(&policy, "10.96.0.1"), None, "an allowed range re-opens the API server");
        let everything = EgressPolicy::local().with_rules(vec![], vec![parse_cidr("0.0.0.0/0").unwrap()]);
        assert_eq!(rule(&everything, "8.8.8.8").as_deref(), Some("--egress-deny 0.0.0.0/0"));
        assert_eq!(rule(&everything, "2001:db8::1"), None, "an IPv4 range does not match IPv6");
    }

    #[test]
    fn cidrs_parse_with_or_without_a_prefix() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr(" 10.0.0.7 ").unwrap().to_string(), "10.0.0.7/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0/8"] {
            assert!(parse_cidr(bad).unwrap_err().contains("is not a CIDR"), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_resolve_only_to_allowed_addresses() {
        let refused = EgressPolicy::shared(&[]).resolve("localhost", 80).await.unwrap_err();
        assert!(matches!(&refused, EgressError::Refused(r) if r.rule == "loopback"), "{refused}");
        let local = EgressPolicy::local().resolve("localhost", 80).await.unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{local:?}");
        let literal = EgressPolicy::shared(&[]).resolve("[::1]", 80).await.unwrap_err();
        assert!(matches!(literal, EgressError::Refused(_)));
    }

    #[test]
    fn refusals_are_found_in_error_chains() {
        #[derive(Debug)]
        struct Wrapper(EgressRefused);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect failed")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = EgressRefused { address: ip("127.0.0.1"), rule: "loopback".into() };
        let error = Wrapper(refused.clone());
        assert_eq!(find_refusal(&error), Some(&refused));
        assert_eq!(refused.to_string(), "127.0.0.1 is refused by the egress policy (loopback)");
        assert_eq!(find_refusal(&UnknownPeer), None);
    }
}
