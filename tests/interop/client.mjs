// A Node.js client of Arbiter (@grpc/grpc-js, stubs loaded from proto/ at run time, as a
// service in another language would): it prints what it saw as one JSON object, which
// tests/test_interop_node.py checks.  Usage: node client.mjs HOST:PORT PROTO_DIR
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [target, protoDir] = process.argv.slice(2);
const definition = protoLoader.loadSync(["arbiter/v1/decision.proto"], {
  includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true,
  oneofs: true,
});
const api = grpc.loadPackageDefinition(definition).arbiter.v1;
const client = new api.DecisionService(target, grpc.credentials.createInsecure());

// google.rpc.Status and BadRequest, to read the error details a server attaches
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message FieldViolation { string field = 1; string description = 2; }
  message BadRequest { repeated FieldViolation field_violations = 1; }
`, { keepCase: true }).root;

function call(method, request, deadlineSeconds = 5) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + deadlineSeconds * 1000);
    client[method](request, { deadline }, (err, response) => {
      if (!err) return resolve({ ok: true, response });
      const out = { ok: false, code: grpc.status[err.code], details: err.details };
      const raw = err.metadata && err.metadata.get("grpc-status-details-bin")[0];
      if (raw) {
        const status = rpc.lookupType("google.rpc.Status").decode(raw);
        out.violations = status.details
          .filter((d) => d.type_url.endsWith("google.rpc.BadRequest"))
          .flatMap((d) => rpc.lookupType("google.rpc.BadRequest").decode(d.value)
            .field_violations.map((v) => ({ field: v.field, description: v.description })));
      }
      resolve(out);
    });
  });
}

const now = Math.floor(Date.now() / 1000);
const seen = {};
seen.track = await call("TrackEvent", {
  user_id: "node-user", event_type: "add_to_cart",
  timestamp: { seconds: now - 26 * 3600, nanos: 500000000 },
  properties: { value: { number_value: 89.5 } },
  traits: { first_name: { string_value: "Nadia" }, email_opt_in: { bool_value: true } },
});
// the same purchase sent twice under its event_id (a retry): applied once
const purchase = { user_id: "node-buyer", event_type: "purchase", event_id: "order-node-1",
                   properties: { value: { number_value: 20 } } };
seen.purchase = await call("TrackEvent", purchase);
seen.purchase_again = await call("TrackEvent", purchase);
seen.track_batch = await call("TrackEventBatch", { events: [
  { user_id: "node-loader", event_type: "visit", event_id: "visit-1" },
  { user_id: "node-loader", event_type: "no_such_event" },
  { user_id: "node-loader", event_type: "visit", event_id: "visit-1" },
] });
seen.decide = await call("Decide", { user_id: "node-user", placement: "email", channel: "email",
                                     explain: true });
// a decision under a request_id, asked for again (a retry): the first answer, once
const keyed = { user_id: "node-keyed", placement: "homepage_banner", channel: "web",
                request_id: "node-send-1" };
seen.keyed = await call("Decide", keyed);
seen.keyed_again = await call("Decide", keyed);
seen.keyed_other = await call("Decide", { ...keyed, limit: 1 });
const decision = seen.decide.ok ? seen.decide.response : null;
if (decision && decision.actions.length) {
  const action = decision.actions[0].action_id;
  const feedback = { decision_id: decision.decision_id, action_id: action };
  seen.impression = await call("Feedback", { ...feedback, outcome: "OUTCOME_IMPRESSION" });
  seen.click = await call("Feedback", { ...feedback, outcome: "OUTCOME_CLICK", idempotency_key: "n-1" });
  seen.click_again = await call("Feedback", { ...feedback, outcome: "OUTCOME_CLICK",
                                              idempotency_key: "n-1" });
}
seen.no_outcome = await call("Feedback", { decision_id: decision ? decision.decision_id : "x",
                                          action_id: "cart_reminder" });
seen.bad_placement = await call("Decide", { user_id: "node-user", placement: "nowhere" });
seen.bad_context = await call("Decide", {
  user_id: "node-user", placement: "cart_page", channel: "web",
  context: { cart_value: { string_value: "lots" } },
});
seen.no_user = await call("Decide", { user_id: "", placement: "email" });
seen.batch = await call("DecideBatch", { requests: [
  { user_id: "node-user", placement: "email", channel: "email" },
  { user_id: "", placement: "email" },
] });
seen.profile = await call("GetProfile", { user_id: "node-user" });
// a trait removed: null_value (google.protobuf.NullValue), as a Node client sends it
seen.removed = await call("TrackEvent", { user_id: "node-user", event_type: "visit",
                                          traits: { email_opt_in: { null_value: "NULL_VALUE" } } });
seen.profile_after = await call("GetProfile", { user_id: "node-user" });
client.close();
console.log(JSON.stringify(seen));
