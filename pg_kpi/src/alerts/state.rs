//! The state machine of one alert instance (a rule, or a rule and one group value):
//!
//! ```text
//! inactive ──true──▶ pending ──true for `for`──▶ firing ──not active for keep_firing_for──▶ inactive
//!     ▲                 │                                              (resolved)
//!     └──── false ──────┘ (inactive: pending cancelled)
//! ```
//!
//! With `for` = 0 an inactive instance fires at once. While firing, "active" means the
//! recovery threshold is still crossed when the rule has one (hysteresis), so a value
//! hovering at the threshold does not resolve and re-fire on every fold. Times are
//! microseconds since 2000-01-01 (Postgres's timestamptz).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Inactive,
    Pending,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }

    pub fn parse(s: &str) -> State {
        match s {
            "pending" => State::Pending,
            "firing" => State::Firing,
            _ => State::Inactive,
        }
    }
}

/// What is kept between evaluations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    pub state: State,
    pub active_since: Option<i64>,
    pub firing_since: Option<i64>,
    pub last_active_at: Option<i64>,
}

impl Instance {
    pub const INACTIVE: Instance = Instance {
        state: State::Inactive,
        active_since: None,
        firing_since: None,
        last_active_at: None,
    };
}

/// One evaluation's input: whether the condition holds, and (while firing) whether the
/// recovery threshold is still crossed.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub crossed: bool,
    pub still_crossed: bool,
}

/// A transition, named by what the history records (`to_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Pending,
    Firing,
    Resolved,
    /// A pending instance whose condition stopped holding before `for` passed.
    Cancelled,
}

impl Transition {
    pub fn to_state(self) -> &'static str {
        match self {
            Transition::Pending => "pending",
            Transition::Firing => "firing",
            Transition::Resolved => "resolved",
            Transition::Cancelled => "inactive",
        }
    }
}

/// The instance after seeing `seen` at `now`, and the transition, if any.
pub fn step(
    prev: Instance,
    seen: Seen,
    now: i64,
    for_us: i64,
    keep_firing_us: i64,
) -> (Instance, Option<Transition>) {
    let fire = |since: i64| Instance {
        state: State::Firing,
        active_since: Some(since),
        firing_since: Some(now),
        last_active_at: Some(now),
    };
    match prev.state {
        State::Inactive if seen.crossed => {
            if for_us <= 0 {
                (fire(now), Some(Transition::Firing))
            } else {
                let pending = Instance {
                    state: State::Pending,
                    active_since: Some(now),
                    firing_since: None,
                    last_active_at: Some(now),
                };
                (pending, Some(Transition::Pending))
            }
        }
        State::Inactive => (prev, None),
        State::Pending if !seen.crossed => (Instance::INACTIVE, Some(Transition::Cancelled)),
        State::Pending => {
            let since = prev.active_since.unwrap_or(now);
            if now - since >= for_us {
                (fire(since), Some(Transition::Firing))
            } else {
                let still = Instance {
                    last_active_at: Some(now),
                    ..prev
                };
                (still, None)
            }
        }
        State::Firing if seen.still_crossed => {
            let still = Instance {
                last_active_at: Some(now),
                ..prev
            };
            (still, None)
        }
        State::Firing => {
            let last = prev.last_active_at.unwrap_or(now);
            if now - last >= keep_firing_us {
                (Instance::INACTIVE, Some(Transition::Resolved))
            } else {
                (prev, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn seen(crossed: bool) -> Seen {
        Seen {
            crossed,
            still_crossed: crossed,
        }
    }

    #[test]
    fn without_for_it_fires_at_once_and_resolves_at_once() {
        let (i, t) = step(Instance::INACTIVE, seen(true), 10 * S, 0, 0);
        assert_eq!((i.state, t), (State::Firing, Some(Transition::Firing)));
        assert_eq!(i.firing_since, Some(10 * S));
        let (i, t) = step(i, seen(true), 11 * S, 0, 0);
        assert_eq!((i.state, t), (State::Firing, None));
        let (i, t) = step(i, seen(false), 12 * S, 0, 0);
        assert_eq!((i, t), (Instance::INACTIVE, Some(Transition::Resolved)));
    }

    #[test]
    fn for_holds_it_pending_and_a_dip_cancels() {
        let (i, t) = step(Instance::INACTIVE, seen(true), 0, 60 * S, 0);
        assert_eq!((i.state, t), (State::Pending, Some(Transition::Pending)));
        let (i, t) = step(i, seen(true), 59 * S, 60 * S, 0);
        assert_eq!((i.state, t), (State::Pending, None));
        let (i2, t) = step(i, seen(true), 60 * S, 60 * S, 0);
        assert_eq!((i2.state, t), (State::Firing, Some(Transition::Firing)));
        assert_eq!(
            i2.active_since,
            Some(0),
            "firing keeps when it became active"
        );
        let (i3, t) = step(i, seen(false), 59 * S, 60 * S, 0);
        assert_eq!((i3, t), (Instance::INACTIVE, Some(Transition::Cancelled)));
    }

    #[test]
    fn keep_firing_for_outlasts_a_short_dip() {
        let (i, _) = step(Instance::INACTIVE, seen(true), 0, 0, 30 * S);
        let (i, t) = step(i, seen(false), 10 * S, 0, 30 * S);
        assert_eq!((i.state, t), (State::Firing, None));
        let (i, t) = step(i, seen(true), 20 * S, 0, 30 * S);
        assert_eq!((i.state, t), (State::Firing, None), "back before the delay");
        let (i, t) = step(i, seen(false), 49 * S, 0, 30 * S);
        assert_eq!(
            (i.state, t),
            (State::Firing, None),
            "29 s since last active"
        );
        let (_, t) = step(i, seen(false), 50 * S, 0, 30 * S);
        assert_eq!(t, Some(Transition::Resolved));
    }

    #[test]
    fn the_recovery_threshold_keeps_it_firing_between_the_lines() {
        let (i, _) = step(Instance::INACTIVE, seen(true), 0, 0, 0);
        // Below the threshold but above the recovery line: still firing.
        let between = Seen {
            crossed: false,
            still_crossed: true,
        };
        let (i, t) = step(i, between, S, 0, 0);
        assert_eq!((i.state, t), (State::Firing, None));
        let (_, t) = step(i, seen(false), 2 * S, 0, 0);
        assert_eq!(t, Some(Transition::Resolved));
    }
}
