// KEDA objects against KEDA's own schema (@kubernetes-models/keda, generated from KEDA's CRDs):
// each object of the JSON array in the file named by argv[2]. One line per object; exit 1 if
// any is invalid or of a kind this does not know. Run by tests/deploy/test_k8s.py, which also
// type-checks the same objects with tsc --strict (unknown fields, which the schema allows).
import { readFileSync } from "node:fs";
import { ClusterTriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/ClusterTriggerAuthentication";
import { ScaledJob } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledJob";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const models = Object.fromEntries(
  [ClusterTriggerAuthentication, ScaledJob, ScaledObject, TriggerAuthentication].map((m) => [
    `${m.apiVersion}/${m.kind}`,
    m,
  ]),
);
let failed = 0;
for (const doc of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const what = `${doc.kind}/${doc.metadata?.name}`;
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) {
    console.log(`FAIL ${what}: no KEDA model for ${doc.apiVersion}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`ok ${what}`);
  } catch (err) {
    console.log(`FAIL ${what}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
