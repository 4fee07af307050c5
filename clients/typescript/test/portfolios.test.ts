import assert from "node:assert/strict";
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { FleetError } from "../src/index.js";
import { fleet, unique, within } from "./harness.js";

const objects = process.env.FLEET_OBJECTS;
const tenant = process.env.FLEET_TENANT;
/** A small JPEG of the repository's image fixtures. */
const photo = fileURLToPath(new URL("../../../../tests/fixtures/images/formats/image-rs_jpg_progressive_cat.jpg", import.meta.url));

test("a portfolio's image is analysed and varied by its workflow and read back", async () => {
  assert.ok(objects && tenant, "FLEET_OBJECTS and FLEET_TENANT are set by scripts/ts-client.sh");
  const key = `tenants/${tenant}/uploads/${unique("cat")}.jpg`;
  await mkdir(join(objects, key, ".."), { recursive: true });
  await copyFile(photo, join(objects, key));
  const portfolio = unique("gallery");
  const accepted = await fleet.portfolios.create({ portfolio, images: [{ id: "cat", key }] });
  assert.equal(accepted.images, 1);
  assert.equal(accepted.steps, 2, "the analysis and the selection");
  const workflow = await within(60_000, "the portfolio's workflow to end", fleet.workflows.wait(accepted.workflow, { timeoutMs: 60_000 }));
  assert.equal(workflow.state, "succeeded", JSON.stringify(workflow));
  const names = (workflow.steps as { name: string }[]).map((s) => s.name);
  assert.deepEqual(names, ["analyze-0", "select", "variants-0"]);
  const view = await fleet.portfolios.get(portfolio);
  assert.equal(view.images.length, 1);
  const image = view.images[0]!;
  assert.equal(image.id, "cat");
  assert.equal(image.format, "jpeg");
  assert.ok(image.width > 0 && image.height > 0);
});

test("an image outside the tenant's own prefix is refused; uploads need an S3 store", async () => {
  await assert.rejects(
    fleet.portfolios.create({ portfolio: unique("gallery"), images: [{ id: "x", key: "tenants/someone-else/x.jpg" }] }),
    (e: unknown) => e instanceof FleetError && e.status === 422 && e.code === "invalid",
  );
  await assert.rejects(
    fleet.portfolios.createUpload({ name: "x.jpg", content_type: "image/jpeg", bytes: 10 }),
    (e: unknown) => e instanceof FleetError && e.status === 501 && e.code === "not_configured",
  );
  await assert.rejects(fleet.portfolios.get(unique("nothing")), (e: unknown) => e instanceof FleetError && e.code === "not_found");
});
