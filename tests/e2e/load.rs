//! Many concurrent requests through gateway → frontend → backend, with each
//! way of serving connections (`--workers`, `--pin-workers`).

use integration_tests::{Running, TopologyFile, client, request};

async fn a_thousand_concurrent_requests(extra: &[&str]) -> Running {
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
    orch
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

/// `Cpus_allowed_list` of each `orch-worker-N` thread of `pid`, by N.
fn worker_cpus(pid: u32) -> Vec<String> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Some(n) = name.trim().strip_prefix("orch-worker-") else { continue };
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned();
        workers.push((n.parse::<usize>().unwrap(), cpus));
    }
    workers.sort();
    workers.into_iter().map(|(_, cpus)| cpus).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_worker_threads_answer_them_all_each_on_a_cpu_of_its_own() {
    let orch = a_thousand_concurrent_requests(&["--workers", "2", "--pin-workers"]).await;
    let cpus = worker_cpus(orch.pid());
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    assert!(cpus.iter().all(|c| c.parse::<usize>().is_ok()), "each worker is bound to one CPU: {cpus:?}");
    // Two different ones when this process may use two or more.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert_ne!(cpus[0], cpus[1], "two CPUs for two workers");
    }
    let told = orch.log().into_iter().find(|l| l.contains("Connection workers bound to CPUs."));
    let told = told.unwrap_or_else(|| orch.fail("the log does not say where the workers are bound"));
    assert!(told.contains(&format!("cpus=[{}, {}]", cpus[0], cpus[1])), "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_each_workers_connections_and_name_its_cpu() {
    let orch =
        Running::start_with(TopologyFile::from_repo("topologies/hello.yaml"), &["--workers", "2", "--pin-workers"])
            .await;
    let web = orch.tier_addr("web").await;
    // Four keep-alive connections, each answered once (so each was handed to a worker).
    let mut open = Vec::new();
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(web).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let driven = tokio::spawn(conn);
        let req = hyper::Request::get("/api").header("host", web.to_string()).body(Default::default()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        open.push((send, driven));
    }
    let cpus = worker_cpus(orch.pid());
    let (code, metrics) = orch.get(orch.admin, "/admin/metrics").await;
    assert_eq!(code, 200);
    for (i, cpu) in cpus.iter().enumerate() {
        let line = format!(r#"orchestrator_worker_connections{{worker="{i}",cpu="{cpu}"}} 2"#);
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
    drop(open);
}
