// The declarations compile, and describe the client as test/types/usage.ts uses it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));

test("client.d.ts and protocol.d.ts type-check a typical use", async () => {
  const tsc = path.join(here, "../node_modules/typescript/bin/tsc");
  const result = await promisify(execFile)(process.execPath, [tsc, "-p", path.join(here, "types/tsconfig.json")]).catch(
    (error) => error,
  );
  assert.equal(result.code ?? 0, 0, `${result.stdout}${result.stderr}`);
});
