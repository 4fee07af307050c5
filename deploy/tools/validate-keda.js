// Validates the KEDA objects of deploy/k8s (a JSON array of {file, doc} on stdin, from
// `checks.py keda-json`) with the schemas of the npm package @kubernetes-models/keda,
// generated from KEDA's CRDs. Like the API server, these schemas check types and
// required fields but let unknown fields through: checks.py k8s rejects those.
// Usage: node validate-keda.js NPM_PREFIX   (the folder whose node_modules holds the package)
const path = require("path");
const models = require(path.join(process.argv[2], "node_modules/@kubernetes-models/keda/keda.sh/v1alpha1"));
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  let failed = 0;
  for (const { file, doc } of JSON.parse(input)) {
    const [group, version] = doc.apiVersion.split("/");
    const Model = group === "keda.sh" && version === "v1alpha1" ? models[doc.kind] : undefined;
    const where = `${file}: ${doc.kind}/${doc.metadata && doc.metadata.name}`;
    if (!Model) { console.log(`FAIL ${where}: no KEDA schema for ${doc.apiVersion} ${doc.kind}`); failed++; continue; }
    try { new Model(doc).validate(); console.log(`ok   ${where} (keda.sh/v1alpha1 CRD schema)`); }
    catch (e) { console.log(`FAIL ${where}: ${e.message}`); failed++; }
  }
  process.exit(failed ? 1 : 0);
});
