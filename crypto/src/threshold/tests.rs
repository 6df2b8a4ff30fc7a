//! The threshold schemes' verdicts (TS2, TS3, TS4, SM1), the stand-in's checked against the
//! real scheme's, the collector's optimistic combining and blame, and the key files.

use super::*;
use crate::CryptoError;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn deal<S: ThresholdScheme>(members: usize, needed: usize) -> (S::PublicKey, Vec<S::SecretShare>) {
    S::deal(members, needed, &mut ChaCha20Rng::seed_from_u64(7))
}

fn shares<S: ThresholdScheme>(secrets: &[S::SecretShare], indices: &[u32], message: &Digest) -> Vec<(u32, S::Share)> {
    indices.iter().map(|&i| (i, S::sign_share(&secrets[i as usize], message))).collect()
}

/// Every verdict a protocol role can observe, for one scripted key set of 3 of 4.
fn verdicts<S: ThresholdScheme>() -> Vec<(&'static str, bool)> {
    let (key, secrets) = deal::<S>(4, 3);
    let m1 = threshold_message(b"proposal", b"site 1, gv 0, seq 5");
    let m2 = threshold_message(b"proposal", b"site 1, gv 0, seq 6");
    let other_kind = threshold_message(b"accept", b"site 1, gv 0, seq 5");
    let share0 = S::sign_share(&secrets[0], &m1);
    let good = shares::<S>(&secrets, &[0, 1, 2], &m1);
    let other_good = shares::<S>(&secrets, &[1, 2, 3], &m1);
    let mut one_bad = good.clone();
    one_bad[2].1 = S::sign_share(&secrets[2], &m2);
    let combined = S::combine(&key, &good).unwrap();
    let combined_other = S::combine(&key, &other_good).unwrap();
    let spoiled = S::combine(&key, &one_bad).unwrap();
    let mut duplicate = good.clone();
    duplicate[2] = duplicate[0].clone();
    vec![
        ("share verifies under its member", S::verify_share(&key, 0, &share0, &m1)),
        ("share verifies under another member", S::verify_share(&key, 1, &share0, &m1)),
        ("share verifies for another message", S::verify_share(&key, 0, &share0, &m2)),
        ("share verifies for another kind (SM1)", S::verify_share(&key, 0, &share0, &other_kind)),
        ("needed good shares combine and verify (TS2)", S::verify(&key, &combined, &m1)),
        ("the combination verifies for another message", S::verify(&key, &combined, &m2)),
        ("any needed good shares give one signature", combined == combined_other),
        ("a combination with a bad share verifies (TS3)", S::verify(&key, &spoiled, &m1)),
        ("the bad share is found alone", !S::verify_share(&key, 2, &one_bad[2].1, &m1)),
        ("too few shares combine", S::combine(&key, &good[..2]).is_ok()),
        ("a duplicate counts twice", S::combine(&key, &duplicate).is_ok()),
        (
            "an unknown index combines",
            S::combine(&key, &[(0, share0.clone()), (1, good[1].1.clone()), (9, share0)]).is_ok(),
        ),
    ]
}

const EXPECTED: [bool; 12] = [true, false, false, false, true, false, true, false, true, false, false, false];

#[test]
fn ts2_ts3_sm1_the_real_scheme_gives_the_expected_verdicts() {
    let verdicts = verdicts::<Bls>();
    assert_eq!(verdicts.iter().map(|(_, v)| *v).collect::<Vec<_>>(), EXPECTED, "{verdicts:#?}");
}

/// The stand-in may stand in for the real scheme in simulator runs because its verdicts are
/// the real scheme's, one by one.
#[test]
fn the_stand_in_gives_the_real_schemes_verdicts() {
    assert_eq!(verdicts::<Simulated>(), verdicts::<Bls>());
}

/// TS4: a verified site signature is checked with the site's public key alone: a copy of
/// the key from its serialized form (as another site holds it) accepts it.
#[test]
fn ts4_a_site_signature_verifies_with_the_site_key_alone() {
    fn check<S: ThresholdScheme>() {
        let (key, secrets) = deal::<S>(7, 5);
        let message = threshold_message(b"accept", b"payload");
        let signature = S::combine(&key, &shares::<S>(&secrets, &[6, 0, 3, 2, 5], &message)).unwrap();
        let remote: S::PublicKey = rmp_serde::from_slice(&rmp_serde::to_vec(&key).unwrap()).unwrap();
        let carried: S::Signature = rmp_serde::from_slice(&rmp_serde::to_vec(&signature).unwrap()).unwrap();
        assert!(S::verify(&remote, &carried, &message));
        let (other_site, _) = S::deal(7, 5, &mut ChaCha20Rng::seed_from_u64(8));
        assert!(!S::verify(&other_site, &carried, &message), "another site's key accepts it");
    }
    check::<Bls>();
    check::<Simulated>();
}

fn collector_signs_with_one_check<S: ThresholdScheme>() {
    let (key, secrets) = deal::<S>(4, 3);
    let message = threshold_message(b"proposal", b"x");
    let mut collector = ShareCollector::<S>::new(std::sync::Arc::new(key), message);
    for (index, share) in shares::<S>(&secrets, &[3, 1], &message) {
        collector.add(index, share).unwrap();
    }
    assert_eq!(collector.try_combine(), Combined { signature: None, blamed: vec![] });
    collector.add(0, S::sign_share(&secrets[0], &message)).unwrap();
    let combined = collector.try_combine();
    assert!(combined.signature.is_some() && combined.blamed.is_empty());
    assert_eq!(collector.checks(), 1, "one verification of the combined signature, no share checked");
    assert_eq!(collector.add(2, S::sign_share(&secrets[2], &message)), Err(ShareRefusal::AlreadySigned));
}

#[test]
fn ts2_the_collector_combines_and_verifies_once() {
    collector_signs_with_one_check::<Bls>();
    collector_signs_with_one_check::<Simulated>();
}

fn collector_blames_a_bad_share<S: ThresholdScheme>() {
    let (key, secrets) = deal::<S>(4, 3);
    let message = threshold_message(b"proposal", b"x");
    let wrong = threshold_message(b"proposal", b"y");
    let mut collector = ShareCollector::<S>::new(std::sync::Arc::new(key), message);
    collector.add(0, S::sign_share(&secrets[0], &wrong)).unwrap();
    collector.add(1, S::sign_share(&secrets[1], &message)).unwrap();
    assert_eq!(collector.add(1, S::sign_share(&secrets[1], &message)), Err(ShareRefusal::Duplicate));
    assert_eq!(collector.add(4, S::sign_share(&secrets[1], &message)), Err(ShareRefusal::UnknownSigner));
    collector.add(2, S::sign_share(&secrets[2], &message)).unwrap();
    let first = collector.try_combine();
    assert_eq!((first.signature.is_some(), first.blamed.clone()), (false, vec![0]), "member 0 is blamed");
    assert_eq!(collector.add(0, S::sign_share(&secrets[0], &message)), Err(ShareRefusal::Blamed));
    collector.add(3, S::sign_share(&secrets[3], &message)).unwrap();
    let second = collector.try_combine();
    assert!(second.signature.is_some(), "a bad share does not stop the site from signing (TS3)");
    assert_eq!(collector.blamed().iter().copied().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn ts3_a_bad_share_is_blamed_and_the_site_still_signs() {
    collector_blames_a_bad_share::<Bls>();
    collector_blames_a_bad_share::<Simulated>();
}

/// More than `f` bad shares (of 4, two): the collector never produces a signature, and
/// blames exactly the bad members.
#[test]
fn ts3_with_more_than_f_bad_shares_nothing_is_signed() {
    fn check<S: ThresholdScheme>() {
        let (key, secrets) = deal::<S>(4, 3);
        let (message, wrong) = (threshold_message(b"k", b"x"), threshold_message(b"k", b"y"));
        let mut collector = ShareCollector::<S>::new(std::sync::Arc::new(key), message);
        for index in 0..4u32 {
            let signed = if index < 2 { &wrong } else { &message };
            collector.add(index, S::sign_share(&secrets[index as usize], signed)).unwrap();
        }
        let combined = collector.try_combine();
        assert!(combined.signature.is_none());
        assert_eq!(combined.blamed, vec![0, 1]);
    }
    check::<Bls>();
    check::<Simulated>();
}

#[test]
fn key_files_round_trip_and_bad_files_are_refused_with_their_path() {
    fn check<S: ThresholdScheme>() {
        let dir = tempfile::tempdir().unwrap();
        let (key, secrets) = deal::<S>(4, 3);
        let (public, share) = (dir.path().join("site-1.pub"), dir.path().join("replica-2.share"));
        save_public_key::<S>(&key, &public).unwrap();
        save_secret_share::<S>(&secrets[2], &share).unwrap();
        assert_eq!(load_public_key::<S>(&public).unwrap(), key);
        let loaded = load_secret_share::<S>(&share).unwrap();
        let message = threshold_message(b"k", b"x");
        assert_eq!(S::index(&loaded), 2);
        assert!(S::verify_share(&key, 2, &S::sign_share(&loaded, &message), &message));

        let refused = |path: &Path| match load_public_key::<S>(path) {
            Err(CryptoError::KeyFile { path: named, reason }) => {
                assert_eq!(named, path);
                reason
            }
            other => panic!("{other:?}"),
        };
        assert!(refused(&share).contains("expected"), "a share is not a public key");
        let text = std::fs::read_to_string(&public).unwrap();
        let truncated = dir.path().join("truncated.pub");
        std::fs::write(&truncated, &text[..text.len() - 20]).unwrap();
        assert!(refused(&truncated).contains("truncated"));
        let missing = dir.path().join("missing.pub");
        assert!(!refused(&missing).is_empty());
    }
    check::<Bls>();
    check::<Simulated>();
    // A key file of one scheme is not read as the other's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.pub");
    save_public_key::<Simulated>(&deal::<Simulated>(4, 3).0, &path).unwrap();
    assert!(load_public_key::<Bls>(&path).is_err());
}

use std::path::Path;
