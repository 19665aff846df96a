//! Many concurrent requests through gateway → frontend → backend, with each
//! way of serving connections (`--workers`).

use integration_tests::{Running, TopologyFile, client, request};

async fn a_thousand_concurrent_requests(extra: &[&str]) {
    let orch = Running::start_with(TopologyFile::from_repo("topologies/hello.yaml"), extra).await;
    let web = orch.tier_addr("web").await;
    let http = client();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { request(&http, "GET", web, "/api", Default::default()).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((200, body)) if body == r#"{"message":"Hello Python!","data":"Hello Go!"}"# => ok += 1,
            other => orch.fail(&format!("unexpected answer with {extra:?}: {other:?}")),
        }
    }
    assert_eq!(ok, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_are_all_answered_correctly() {
    a_thousand_concurrent_requests(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_threads_answer_them_all_too() {
    a_thousand_concurrent_requests(&["--workers", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_runtime_answers_them_all_too() {
    a_thousand_concurrent_requests(&["--workers", "shared"]).await;
}
