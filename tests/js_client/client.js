// A crdtstore client in Node.js, for tests/test_other_languages.py.
//
//     node client.js HOST:PORT PROTO_DIR KEY_PREFIX
//
// It loads proto/crdtstore/v1/kv.proto with @grpc/proto-loader and keepCase: true,
// so that the request fields keep their proto names (idempotency_key, page_token),
// then checks against a running node:
//
//   * set and get a register (bytes in, the same bytes out);
//   * an increment sent twice with one idempotency key counts once, and the
//     second answer says replayed;
//   * a scan that follows page_token through more keys than one page.
//
// It also shows the trap the README warns about: with the loader's default
// (camelCase field names) a request written with idempotency_key or page_token
// in snake case loses the field without a word: the retried increment counts
// twice, and the scan serves its first page again.
//
// It prints one JSON object on stdout and exits 0 when every check held;
// otherwise it prints what failed on stderr and exits 1.

"use strict";

const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const DEADLINE_MS = 10000;
const SCAN_KEYS = 25;
const SCAN_PAGE = 10;

function load(protoDir, keepCase) {
  const definition = protoLoader.loadSync("crdtstore/v1/kv.proto", {
    keepCase,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protoDir],
  });
  return grpc.loadPackageDefinition(definition).crdtstore.v1;
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

async function counterValue(kv, key) {
  const got = await call(kv, "Get", { key });
  check(got.entry.value.type === "VALUE_TYPE_COUNTER", `${key} is not a counter: ${got.entry.value.type}`);
  return Number(got.entry.value.counter_decimal);
}

async function main() {
  const [addr, protoDir, prefix] = process.argv.slice(2);
  check(addr && protoDir && prefix, "usage: node client.js HOST:PORT PROTO_DIR KEY_PREFIX");
  const v1 = load(protoDir, true);
  const kv = new v1.KV(addr, grpc.credentials.createInsecure());
  const report = {};

  // A register: the bytes written are the bytes read.
  const value = Buffer.from([0x68, 0x69, 0x00, 0xff]);
  await call(kv, "Mutate", {
    operations: [{ key: `${prefix}reg`, set: { value } }],
    idempotency_key: crypto.randomBytes(16),
  });
  const reg = await call(kv, "Get", { key: `${prefix}reg` });
  check(reg.entry.value.type === "VALUE_TYPE_REGISTER", `register type: ${reg.entry.value.type}`);
  check(Buffer.compare(reg.entry.value.register, value) === 0, `register value: ${reg.entry.value.register.toString("hex")}`);
  report.register = reg.entry.value.register.toString("hex");

  // An increment retried with the same idempotency key counts once.
  const increment = {
    operations: [{ key: `${prefix}ctr`, increment: { amount: "5" } }],
    idempotency_key: crypto.randomBytes(16),
  };
  const first = await call(kv, "Mutate", increment);
  const retry = await call(kv, "Mutate", increment);
  check(first.replayed === false, "the first increment says replayed");
  check(retry.replayed === true, "the retried increment does not say replayed");
  report.counter = await counterValue(kv, `${prefix}ctr`);
  check(report.counter === 5, `the increment sent twice counted ${report.counter / 5} times`);
  report.replayed = [first.replayed, retry.replayed];

  // A scan through more keys than one page, following page_token.
  const keys = Array.from({ length: SCAN_KEYS }, (_, i) => `${prefix}scan/${String(i).padStart(3, "0")}`);
  await call(kv, "Mutate", {
    operations: keys.map((key) => ({ key, add: { members: ["m"] } })),
    idempotency_key: crypto.randomBytes(16),
  });
  const scanned = [];
  let pages = 0;
  let page_token = "";
  do {
    const page = await call(kv, "Scan", { prefix: `${prefix}scan/`, limit: SCAN_PAGE, page_token });
    pages += 1;
    check(pages <= SCAN_KEYS, "the scan does not end: page_token is not followed");
    scanned.push(...page.entries.map((entry) => entry.key));
    page_token = page.next_page_token;
  } while (page_token);
  check(JSON.stringify(scanned) === JSON.stringify(keys), `the scan saw ${scanned.length} of ${keys.length} keys`);
  report.scan = { keys: scanned.length, pages };

  // The trap: with camelCase names, idempotency_key in snake case is dropped and a retry applies twice.
  const camel = new (load(protoDir, false).KV)(addr, grpc.credentials.createInsecure());
  const trapped = {
    operations: [{ key: `${prefix}trap`, increment: { amount: "1" } }],
    idempotency_key: crypto.randomBytes(16),
  };
  await call(camel, "Mutate", trapped);
  await call(camel, "Mutate", trapped);
  report.camel_case_retry_counted = await counterValue(kv, `${prefix}trap`);
  // ... and page_token is dropped too: the "second" page is the first again.
  const scan = { prefix: `${prefix}scan/`, limit: SCAN_PAGE };
  const firstPage = await call(camel, "Scan", scan);
  const secondPage = await call(camel, "Scan", { ...scan, page_token: firstPage.nextPageToken });
  report.camel_case_second_page_is_the_first = secondPage.entries[0].key === firstPage.entries[0].key;
  camel.close();

  kv.close();
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((err) => {
  process.stderr.write(`js client: ${err.message}\n`);
  process.exit(1);
});
