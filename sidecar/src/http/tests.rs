//! Tests of the sidecar's HTTP endpoints and the push rate limit, in paused
//! time.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

/// How many of `n` requests in a row `caller` gets through.
fn granted(limit: &RateLimit, caller: IpAddr, n: usize) -> usize {
    (0..n).filter(|_| limit.allow(caller)).count()
}

#[tokio::test(start_paused = true)]
async fn one_callers_flood_leaves_the_others_their_burst() {
    let limit = RateLimit::new(10.0, 20);
    assert_eq!(granted(&limit, ip(1), 1000), 20, "the flooding caller");
    for other in 2..=5 {
        assert_eq!(granted(&limit, ip(other), 20), 20, "caller {other}");
    }
    assert!(!limit.allow(ip(1)));
    // Refilled at the rate, capped at the burst.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(granted(&limit, ip(1), 100), 5);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(granted(&limit, ip(1), 100), 20);
}

#[tokio::test(start_paused = true)]
async fn an_ipv4_caller_is_one_caller_on_a_dual_stack_socket() {
    let limit = RateLimit::new(1.0, 2);
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    assert!(limit.allow(v4));
    assert!(limit.allow(mapped));
    assert!(!limit.allow(v4) && !limit.allow(mapped));
    assert!(limit.allow(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(limit.tracked(), 2);
}

#[tokio::test(start_paused = true)]
async fn tracked_callers_are_bounded_and_the_oldest_goes_first() {
    let limit = RateLimit::with_max_callers(1.0, 1, 3);
    for n in 1..=3 {
        assert!(limit.allow(ip(n)));
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert!(!limit.allow(ip(2)), "caller 2 has used its burst");
    tokio::time::advance(Duration::from_millis(10)).await;
    // A fourth caller evicts caller 1, seen longest ago.
    assert!(limit.allow(ip(4)));
    assert_eq!(limit.tracked(), 3);
    assert!(!limit.allow(ip(2)) && !limit.allow(ip(3)) && !limit.allow(ip(4)));
    // Caller 1 comes back with a full bucket.
    assert!(limit.allow(ip(1)));
    assert_eq!(limit.tracked(), 3);
    // Many more callers than tracked: never more than the bound.
    for n in 10..=200 {
        limit.allow(ip(n));
    }
    assert_eq!(limit.tracked(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_refilled_caller_is_evicted_before_an_active_one() {
    let limit = RateLimit::with_max_callers(1.0, 1, 2);
    assert!(limit.allow(ip(1)));
    tokio::time::advance(Duration::from_secs(5)).await; // caller 1 is full again
    assert!(limit.allow(ip(2)));
    assert!(!limit.allow(ip(2)));
    // Caller 3 takes caller 1's place, though caller 2 is the newer one:
    // caller 2 keeps its empty bucket.
    assert!(limit.allow(ip(3)));
    assert!(
        !limit.allow(ip(2)),
        "the active caller was evicted and reset"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_of_zero_refuses_every_push() {
    let limit = RateLimit::new(0.0, 0);
    assert_eq!(granted(&limit, ip(1), 10), 0);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(granted(&limit, ip(1), 10), 0);
    assert_eq!(limit.tracked(), 0);
}
