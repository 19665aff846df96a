// The dashboard's JavaScript, and these tests', checked in CI (scripts/test):
// a name declared twice (the second silently wins) or used undeclared is an
// error, as are the mistakes of ESLint's recommended set that need no type.
import js from "@eslint/js";

const browser = {
  window: "readonly",
  document: "readonly",
  location: "readonly",
  fetch: "readonly",
  EventSource: "readonly",
  URLSearchParams: "readonly",
  CSS: "readonly",
  setTimeout: "readonly",
  clearTimeout: "readonly",
  console: "readonly",
  Map: "readonly",
  Set: "readonly",
  dagre: "readonly",
};

const node = {
  process: "readonly",
  console: "readonly",
  setTimeout: "readonly",
  clearTimeout: "readonly",
  URL: "readonly",
  Buffer: "readonly",
};

export default [
  js.configs.recommended,
  {
    files: ["orchestrator/assets/dashboard/app.js"],
    languageOptions: { sourceType: "script", globals: browser },
    rules: { "no-redeclare": "error", "no-undef": "error", "no-shadow": ["error", { hoist: "functions" }] },
  },
  {
    files: ["tests/browser/*.mjs"],
    languageOptions: { sourceType: "module", globals: { ...node, ...browser } },
    rules: { "no-redeclare": "error", "no-undef": "error" },
  },
];
