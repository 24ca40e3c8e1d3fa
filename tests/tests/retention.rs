
/// The refresh policy: a duplicate leaves the deadline as it is (a sliding window is not
/// offered). A key answered as a duplicate just before its deadline still expires on time.
#[test]
fn a_duplicate_leaves_the_deadline_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    assert_eq!(store.check_or_insert(b"k", TTL, b"v").unwrap(), Outcome::Inserted);
    clock.advance(TTL - Duration::from_millis(1));
    assert!(store.check_or_insert(b"k", TTL, b"w").unwrap().is_duplicate());
    let token = store.claim(b"c", LEASE).unwrap();
    let Claim::Acquired(token) = token else { panic!("{token:?}") };
    store.complete(token, TTL, b"r").unwrap();
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.check_or_insert(b"k", TTL, b"x").unwrap(), Outcome::Inserted);
    assert_eq!(store.get(b"k").unwrap().unwrap(), b"x");
    // The claim's result, replayed by a claim, keeps its own deadline too.
    clock.advance(TTL - Duration::from_millis(2));
    assert!(matches!(store.claim(b"c", LEASE).unwrap(), Claim::Duplicate(_)));
    clock.advance(Duration::from_millis(1));
    acquired(store.claim(b"c", LEASE).unwrap());
}
