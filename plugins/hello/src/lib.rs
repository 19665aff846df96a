use plugin_api::prelude::*;

/// Answers every request with the tier's configured `greeting`.
#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Hello {
    greeting: String,
}

impl Default for Hello {
    fn default() -> Self {
        Self { greeting: "Hello, world!".into() }
    }
}

impl Plugin for Hello {
    async fn handle(&self, req: Request, _cx: Context) -> Response {
        Response::text(format!("{} You asked for {}.\n", self.greeting, req.path()))
    }
}

export_plugin!(Hello);
