// Validates Istio and Gateway API objects against their CRD schemas (npm @kubernetes-models/istio and
// @kubernetes-models/gateway-api). Reads a JSON array of objects on stdin; prints a JSON array with one
// {"ok": true} or {"ok": false, "error": "..."} per object, in order. An apiVersion/kind that neither
// package models is an error: nothing passes unchecked.
import * as istio from "@kubernetes-models/istio";
import * as gatewayApi from "@kubernetes-models/gateway-api";

// "security.istio.io" -> "securityIstioIo", as the packages name their group modules.
const moduleName = (group) => group.replace(/[.-](\w)/g, (_, c) => c.toUpperCase());

function model(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  if (!version) return undefined;
  for (const pkg of [istio, gatewayApi]) {
    const groupModule = pkg[moduleName(group)];
    const cls = groupModule?.[version]?.[kind];
    if (cls) return cls;
  }
  return undefined;
}

function check(obj) {
  const cls = model(obj?.apiVersion, obj?.kind);
  if (!cls) return { ok: false, error: `no schema for ${obj?.apiVersion} ${obj?.kind}` };
  try {
    new cls(obj).validate();
    return { ok: true };
  } catch (err) {
    return { ok: false, error: String(err?.message ?? err) };
  }
}

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
process.stdout.write(JSON.stringify(JSON.parse(input).map(check)));
