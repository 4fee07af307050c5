import assert from "node:assert/strict";
import { test } from "node:test";
import { FleetError } from "../src/index.js";
import { fleet, otherFleet, unique } from "./harness.js";

test("a supplier's calendar settings are written and read back, per tenant", async () => {
  const supplier = unique("supplier");
  const written = await fleet.calendar.putSupplier(supplier, { time_zone: "Europe/Berlin", all_day_busy: true });
  assert.deepEqual(written, { time_zone: "Europe/Berlin", all_day_busy: true });
  assert.deepEqual(await fleet.calendar.getSupplier(supplier), written);
  assert.notEqual((await otherFleet.calendar.getSupplier(supplier)).time_zone, "Europe/Berlin", "not another tenant's");
  assert.deepEqual(await fleet.calendar.conflicts(supplier), []);
  await assert.rejects(
    fleet.calendar.putSupplier(supplier, { time_zone: "Mars/Olympus" }),
    (e: unknown) => e instanceof FleetError && e.status === 422,
  );
});

test("a client's contact is stored normalised and its timeline starts empty", async () => {
  const client = unique("client");
  const contact = await fleet.comms.putContact({
    client,
    emails: ["Bride@Example.COM"],
    phones: ["07911 123456"],
    default_region: "GB",
  });
  assert.deepEqual(contact.emails, ["bride@example.com"]);
  assert.deepEqual(contact.phones, ["+447911123456"]);
  assert.deepEqual(contact.rejected, []);
  const page = await fleet.comms.timeline(client, { limit: 10 });
  assert.deepEqual(page.entries, []);
  assert.deepEqual(await fleet.comms.listSources(), []);
  await assert.rejects(fleet.comms.getSource("no-such-source"), (e: unknown) => e instanceof FleetError && e.code === "not_found");
  await assert.rejects(fleet.calendar.getSource("no-such-source"), (e: unknown) => e instanceof FleetError && e.code === "not_found");
});
