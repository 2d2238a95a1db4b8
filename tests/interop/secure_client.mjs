// A Node.js client over mutual TLS with bearer tokens: prints, as one JSON object, the
// status of a Decide sent with each token given (an empty one: none) and of one sent
// without a client certificate. tests/test_interop_node.py checks it.
// Usage: node secure_client.mjs HOST:PORT PROTO_DIR PKI_DIR TOKEN...
import fs from "node:fs";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [target, protoDir, pki, ...tokens] = process.argv.slice(2);
const definition = protoLoader.loadSync(["arbiter/v1/decision.proto"], {
  includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true,
});
const api = grpc.loadPackageDefinition(definition).arbiter.v1;
const read = (name) => fs.readFileSync(path.join(pki, name));
const withCertificate = grpc.credentials.createSsl(read("ca.pem"), read("client.key"),
                                                   read("client.pem"));
const withoutCertificate = grpc.credentials.createSsl(read("ca.pem"));
const request = { user_id: "u", placement: "homepage_banner", channel: "web" };

function decide(credentials, token) {
  const client = new api.DecisionService(target, credentials);
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve) => {
    client.Decide(request, metadata, { deadline: new Date(Date.now() + 5000) },
      (err, response) => {
        client.close();
        resolve(err ? grpc.status[err.code] : `OK ${response.actions.length} action(s)`);
      });
  });
}

const seen = {};
for (const token of tokens) seen[token || "(none)"] = await decide(withCertificate, token);
seen["no client certificate"] = await decide(withoutCertificate, tokens[0]);
console.log(JSON.stringify(seen));
