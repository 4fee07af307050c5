//! The worker's one list of kinds (`fleet_worker::kinds::shipped`): what the API accepts,
//! a worker set up from its config runs.

use fleet_tests::{TestDb, TestEnv};
use std::collections::BTreeSet;

#[tokio::test]
async fn a_worker_with_a_database_handles_every_kind_the_api_accepts() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let mut config = env.config("default", 1);
    config.database_url = Some(db.url.clone());

    let shipped = fleet_worker::kinds::shipped(&config).await.expect("the shipped kinds");
    let handled: BTreeSet<&str> = shipped.kinds().collect();
    let public: BTreeSet<&str> = fleet_jobs::catalogue::public_kinds(false).into_iter().collect();
    let unhandled: Vec<_> = public.difference(&handled).collect();
    assert!(unhandled.is_empty(), "public kinds no worker runs: {unhandled:?}");
    // The selection step of `POST /v1/portfolios`' workflows (an internal kind).
    assert!(handled.contains("portfolio.select"), "{handled:?}");
    assert!(!handled.contains("probe"), "the test kind runs only with test_kinds");

    config.test_kinds = true;
    let with_tests = fleet_worker::kinds::shipped(&config).await.expect("the shipped kinds");
    assert!(with_tests.kinds().any(|k| k == "probe"), "test_kinds adds probe");

    // Without a database only what needs nothing but Redis is registered.
    config.database_url = None;
    let bare = fleet_worker::kinds::shipped(&config).await.expect("the shipped kinds");
    assert_eq!(bare.kinds().collect::<Vec<_>>(), vec!["probe"]);

    db.drop_db().await;
    env.cleanup().await;
}
