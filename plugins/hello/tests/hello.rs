use hello::Hello;
use plugin_api::prelude::*;
use plugin_api::serde_json::json;
use plugin_api::testing::TestHost;

#[test]
fn greets_with_the_configured_greeting() {
    let hello = TestHost::new().start::<Hello>(json!({ "greeting": "Hi!" })).unwrap();
    let resp = hello.call(Request::get("/there"));
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "Hi! You asked for /there.\n");
}

#[test]
fn rejects_unknown_config_keys() {
    let issues = TestHost::new().validate::<Hello>(json!({ "greting": "Hi!" }));
    assert!(issues[0].message.contains("unknown field `greting`"));
}
