//! The route tree: which receivers hear an alert, grouped how, and on what timers.
//!
//! Alertmanager's semantics, so its users are at home: an alert enters at the root
//! (which matches everything) and descends depth-first into the first child whose
//! matchers all hold; `continue` on a matching child lets the following siblings match
//! too. If no child matches, the node itself takes the alert. Unset settings are
//! inherited from the parent, and the root's defaults are Alertmanager's.

use std::time::Duration;

use super::config::Route;
use super::matcher::{all_match, Labels, Matcher};

pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 60 * 60);

/// Which labels split a route's alerts into notification groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// These labels' values (none: one group for the whole route).
    Labels(Vec<String>),
    /// `["..."]`: every label, so each alert instance is its own group.
    All,
}

/// A route's effective settings (its own, else its parent's): what an alert that ends
/// at this node gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Where the node sits in the tree (`0`, `0.1`, `0.1.0`): part of the group key,
    /// so the same alert routed twice forms two groups.
    pub path: String,
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    /// A critical alert unacknowledged this long after firing also goes to this receiver.
    pub escalate: Option<(Duration, String)>,
}

impl Policy {
    /// The labels of `labels` the group is keyed by.
    pub fn group_labels(&self, labels: &Labels) -> Labels {
        match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default()))
                .collect(),
        }
    }

    /// The notification group of an alert with these labels: the route and the group
    /// labels' values, `0.1:{alertname="x",severity="critical"}`. Escalations form
    /// groups of their own (`0.1!esc:{…}`), with the escalation receiver.
    pub fn group_key(&self, labels: &Labels, escalation: bool) -> String {
        let pairs: Vec<String> = self
            .group_labels(labels)
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let esc = if escalation { "!esc" } else { "" };
        format!("{}{esc}:{{{}}}", self.path, pairs.join(","))
    }
}

/// The route path a group key was made for (`0.1` of `0.1!esc:{…}`).
pub fn path_of(group_key: &str) -> &str {
    let end = group_key.find([':', '!']).unwrap_or(group_key.len());
    &group_key[..end]
}

#[derive(Debug)]
struct Node {
    matchers: Vec<Matcher>,
    continue_: bool,
    policy: Policy,
    children: Vec<Node>,
}

/// The parsed route tree of `[alerting.route]`.
#[derive(Debug)]
pub struct RouteTree {
    root: Node,
}

impl RouteTree {
    /// Parses a validated route (errors name the route's key all the same).
    pub fn new(root: &Route) -> Result<RouteTree, String> {
        let defaults = Policy {
            path: "0".into(),
            receiver: String::new(),
            group_by: GroupBy::Labels(Vec::new()),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            escalate: None,
        };
        Ok(RouteTree {
            root: node(root, &defaults, "0".into(), "alerting.route")?,
        })
    }

    /// The policies of every route the alert ends at, in tree order (at least one: the
    /// root takes what nothing else does).
    pub fn routes(&self, labels: &Labels) -> Vec<&Policy> {
        let mut out = Vec::new();
        descend(&self.root, labels, &mut out);
        out
    }

    /// The shortest `escalate_after` in the tree, if any route escalates.
    pub fn shortest_escalation(&self) -> Option<Duration> {
        fn walk(n: &Node, best: &mut Option<Duration>) {
            if let Some((after, _)) = &n.policy.escalate {
                *best = Some(best.map_or(*after, |b| b.min(*after)));
            }
            for c in &n.children {
                walk(c, best);
            }
        }
        let mut best = None;
        walk(&self.root, &mut best);
        best
    }

    /// The policy of the route at `path`, or the root's when the configuration changed
    /// and it is gone (its groups still drain, on the root's timers).
    pub fn policy(&self, path: &str) -> &Policy {
        let mut node = &self.root;
        for step in path.split('.').skip(1) {
            match step
                .parse::<usize>()
                .ok()
                .and_then(|i| node.children.get(i))
            {
                Some(child) => node = child,
                None => return &self.root.policy,
            }
        }
        &node.policy
    }
}

fn node(route: &Route, parent: &Policy, path: String, key: &str) -> Result<Node, String> {
    let matchers = route
        .matchers
        .iter()
        .enumerate()
        .map(|(i, m)| Matcher::parse(m).map_err(|e| format!("{key}.matchers[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let group_by = match &route.group_by {
        None => parent.group_by.clone(),
        Some(g) if g.iter().any(|l| l == "...") => GroupBy::All,
        Some(g) => GroupBy::Labels(g.clone()),
    };
    let escalate = match (route.escalate_after, &route.escalate_to) {
        (Some(after), Some(to)) => Some((after, to.clone())),
        _ => parent.escalate.clone(),
    };
    let policy = Policy {
        path: path.clone(),
        receiver: route
            .receiver
            .clone()
            .unwrap_or_else(|| parent.receiver.clone()),
        group_by,
        group_wait: route.group_wait.unwrap_or(parent.group_wait),
        group_interval: route.group_interval.unwrap_or(parent.group_interval),
        repeat_interval: route.repeat_interval.unwrap_or(parent.repeat_interval),
        escalate,
    };
    let children = route
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            node(
                r,
                &policy,
                format!("{path}.{i}"),
                &format!("{key}.routes[{i}]"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Node {
        matchers,
        continue_: route.continue_,
        policy,
        children,
    })
}

/// Adds the routes `labels` ends at under `node`, which matched.
fn descend<'a>(node: &'a Node, labels: &Labels, out: &mut Vec<&'a Policy>) {
    let before = out.len();
    for child in &node.children {
        if all_match(&child.matchers, labels) {
            descend(child, labels, out);
            if !child.continue_ {
                break;
            }
        }
    }
    if out.len() == before {
        out.push(&node.policy);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tree() -> RouteTree {
        let route: Route = toml::from_str(
            r#"
            receiver = "default"
            group_by = ["alertname"]
            group_wait = "10s"
            [[routes]]
            matchers = ['severity="critical"']
            receiver = "pager"
            continue = true
            repeat_interval = "1h"
            escalate_after = "15m"
            escalate_to = "manager"
              [[routes.routes]]
              matchers = ['team="payments"']
              receiver = "payments-pager"
            [[routes]]
            matchers = ['team=~"pay.*"']
            receiver = "payments"
            group_by = ["..."]
            [[routes]]
            matchers = ['kpi="checkout"']
            receiver = "never-reached-for-payments"
            "#,
        )
        .unwrap();
        RouteTree::new(&route).unwrap()
    }

    fn receivers(t: &RouteTree, l: &Labels) -> Vec<String> {
        t.routes(l).iter().map(|p| p.receiver.clone()).collect()
    }

    #[test]
    fn unmatched_alerts_stay_at_the_root() {
        let t = tree();
        let l = labels(&[("alertname", "a"), ("severity", "info")]);
        assert_eq!(receivers(&t, &l), ["default"]);
        assert_eq!(t.routes(&l)[0].path, "0");
    }

    #[test]
    fn continue_lets_later_siblings_match_and_the_first_match_stops_the_rest() {
        let t = tree();
        let l = labels(&[
            ("alertname", "a"),
            ("severity", "critical"),
            ("team", "payments"),
            ("kpi", "checkout"),
        ]);
        // critical (continue) -> its child payments-pager; then payments (no continue)
        // stops before the checkout route.
        assert_eq!(receivers(&t, &l), ["payments-pager", "payments"]);
    }

    #[test]
    fn settings_are_inherited_and_overridden() {
        let t = tree();
        let l = labels(&[("alertname", "a"), ("severity", "critical"), ("team", "x")]);
        let p = t.routes(&l)[0];
        assert_eq!(p.receiver, "pager");
        assert_eq!(p.path, "0.0");
        assert_eq!(p.group_wait, Duration::from_secs(10));
        assert_eq!(p.group_interval, DEFAULT_GROUP_INTERVAL);
        assert_eq!(p.repeat_interval, Duration::from_secs(3600));
        assert_eq!(
            p.escalate,
            Some((Duration::from_secs(900), "manager".into()))
        );
        let child = t.policy("0.0.0");
        assert_eq!(child.receiver, "payments-pager");
        assert_eq!(child.repeat_interval, Duration::from_secs(3600));
        assert!(child.escalate.is_some(), "escalation is inherited");
        assert_eq!(
            t.policy("0.9").path,
            "0",
            "a vanished route falls back to the root"
        );
    }

    #[test]
    fn group_keys_name_the_route_and_the_group_labels() {
        let t = tree();
        let l = labels(&[
            ("alertname", "a"),
            ("severity", "critical"),
            ("team", "ops"),
        ]);
        let p = t.routes(&l)[0];
        assert_eq!(p.group_key(&l, false), r#"0.0:{alertname="a"}"#);
        assert_eq!(p.group_key(&l, true), r#"0.0!esc:{alertname="a"}"#);
        assert_eq!(path_of(&p.group_key(&l, true)), "0.0");
        let all = t.routes(&labels(&[("alertname", "a"), ("team", "pay")]))[0];
        assert_eq!(
            all.group_key(&labels(&[("alertname", "a"), ("team", "pay")]), false),
            r#"0.1:{alertname="a",team="pay"}"#
        );
    }
}
