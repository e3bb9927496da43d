//! Change detection for one secret, in one place: what a look at the store
//! found, against what is served. Pure functions, tested without a store.
//!
//! Two questions, asked in this order by `Engine::check`:
//! [`observe_current`] (after the cheap `current_version` call: read the
//! secret or not?) and [`observe`] (after a read: what changed?). Only a
//! changed value renders and writes the files again; whether the app is
//! told is then the writer's [`Report`](crate::writer::Report), which says
//! whether the rendered files differ from those served.

use rotor_store::VersionId;

/// What the cheap version check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentSeen {
    /// The pinned version is CURRENT now (promoted): the pin ends.
    pub pin_promoted: bool,
    /// The secret must be read: CURRENT moved, or a pin's PENDING version
    /// must be checked.
    pub read: bool,
}

/// After `current_version` answered `current`: `served` is the version
/// served, `pin` the pinned one.
pub fn observe_current(
    served: Option<&VersionId>,
    pin: Option<&VersionId>,
    current: &VersionId,
) -> CurrentSeen {
    let pin_promoted = pin == Some(current);
    let pinned = pin.is_some() && !pin_promoted;
    CurrentSeen {
        pin_promoted,
        read: pinned || served != Some(current),
    }
}

/// What a read changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The served version and value.
    None,
    /// A new version holding the served value: recorded; the files stay.
    Version,
    /// A new value, or the first: the files are rendered again.
    Value,
}

/// A read returned `version` with `value`; `served` is what is served.
pub fn observe(served: Option<(&VersionId, &[u8])>, version: &VersionId, value: &[u8]) -> Change {
    match served {
        Some((_, old)) if old != value => Change::Value,
        None => Change::Value,
        Some((old, _)) if old != version => Change::Version,
        Some(_) => Change::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VersionId {
        VersionId(s.to_owned())
    }

    #[test]
    fn the_cheap_check_reads_only_when_current_moved_or_a_pin_is_held() {
        let (one, two) = (v("1"), v("2"));
        let seen = |served, pin, current| observe_current(served, pin, current);
        // Unpinned: read only when CURRENT is not what is served.
        assert_eq!(
            seen(Some(&one), None, &one),
            CurrentSeen {
                pin_promoted: false,
                read: false
            }
        );
        assert_eq!(
            seen(Some(&one), None, &two),
            CurrentSeen {
                pin_promoted: false,
                read: true
            }
        );
        assert_eq!(
            seen(None, None, &one),
            CurrentSeen {
                pin_promoted: false,
                read: true
            }
        );
        // Pinned to PENDING 2 while CURRENT is 1: the pin is checked by a read.
        assert_eq!(
            seen(Some(&two), Some(&two), &one),
            CurrentSeen {
                pin_promoted: false,
                read: true
            }
        );
        // The pinned version was promoted: the pin ends, nothing to read.
        assert_eq!(
            seen(Some(&two), Some(&two), &two),
            CurrentSeen {
                pin_promoted: true,
                read: false
            }
        );
        // Promoted, but something else is served: read CURRENT.
        assert_eq!(
            seen(Some(&one), Some(&two), &two),
            CurrentSeen {
                pin_promoted: true,
                read: true
            }
        );
    }

    #[test]
    fn a_read_changes_the_value_the_version_or_nothing() {
        let (one, two) = (v("1"), v("2"));
        assert_eq!(observe(None, &one, b"a"), Change::Value);
        assert_eq!(observe(Some((&one, b"a")), &one, b"a"), Change::None);
        assert_eq!(observe(Some((&one, b"a")), &two, b"a"), Change::Version);
        assert_eq!(observe(Some((&one, b"a")), &two, b"b"), Change::Value);
        // The same version with other bytes (a store rewritten): a change.
        assert_eq!(observe(Some((&one, b"a")), &one, b"b"), Change::Value);
    }
}
