//! Plugin `swap`, version 2: answers `v2`. The tests install this library
//! or the other one as `libswap.so` to see a rebuilt plugin reloaded.

#![forbid(unsafe_code)]

use plugin_api::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
struct Swap {}

impl Plugin for Swap {
    async fn handle(&self, _req: Request, _cx: Context) -> Response {
        Response::text("v2")
    }
}

export_plugin!(Swap, name = "swap");
