// Drives the npm package `jose` for the interop tests (tests/interop/test_jose_interop.py).
//
// stdin: {"ops": [{"op": NAME, ...arguments}, ...]}; stdout: one JSON array, one result per op,
// either {"ok": true, ...} or {"ok": false, "error": "<jose error code or name>: <message>"}.
// Bytes travel as base64url; keys as JWKs. `jose` is resolved from $COMITY_INTEROP_DIR/node_modules
// (ESM ignores NODE_PATH, so it is imported by absolute file URL).

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.COMITY_INTEROP_DIR;
if (!dir) {
  process.stderr.write('COMITY_INTEROP_DIR is not set (run `make interop-deps`)\n');
  process.exit(2);
}
const jose = await import(pathToFileURL(createRequire(join(dir, 'package.json')).resolve('jose')).href);

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });
const b64d = (s) => jose.base64url.decode(s);
const b64e = (b) => jose.base64url.encode(b);

const ENVELOPE_DECRYPT = {
  keyManagementAlgorithms: ['ECDH-ES+A256KW'],
  contentEncryptionAlgorithms: ['A256GCM'],
};
const CHUNK_CRIT = { att: true, seq: true, last: true };
const CHUNK_DECRYPT = {
  keyManagementAlgorithms: ['dir'],
  contentEncryptionAlgorithms: ['A256GCM'],
  crit: CHUNK_CRIT,
};

function requireTyp(header, typ) {
  if (typ !== undefined && header.typ !== typ) {
    throw new Error(`typ ${JSON.stringify(header.typ)} where ${typ} is required`);
  }
}

async function verifyCompact(jws, jwk, typ) {
  const { payload, protectedHeader } = await jose.compactVerify(jws, jwk, { algorithms: ['Ed25519'] });
  requireTyp(protectedHeader, typ);
  return { header: protectedHeader, payload: dec.decode(payload) };
}

const ops = {
  // (a) decrypt an envelope with the recipient's private X25519 JWK, then verify the inner JWS.
  async open_envelope({ jwe, decryption_jwk, verification_jwk }) {
    const { plaintext, protectedHeader } = await jose.compactDecrypt(jwe, decryption_jwk, ENVELOPE_DECRYPT);
    requireTyp(protectedHeader, 'comity-envelope+jwe');
    const inner = dec.decode(plaintext);
    const verified = await verifyCompact(inner, verification_jwk, 'comity-envelope+jws');
    return { outer_header: protectedHeader, inner_jws: inner, inner_header: verified.header, payload: verified.payload };
  },

  // (b) build an envelope as SPEC describes: CompactSign, then CompactEncrypt (jose adds epk).
  async seal_envelope({ payload, signing_jwk, signing_kid, recipient_jwk, recipient_kid, iss, aud }) {
    const inner = await new jose.CompactSign(enc.encode(payload))
      .setProtectedHeader({ alg: 'Ed25519', typ: 'comity-envelope+jws', kid: signing_kid })
      .sign(signing_jwk);
    const jwe = await new jose.CompactEncrypt(enc.encode(inner))
      .setProtectedHeader({
        alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: recipient_kid,
        typ: 'comity-envelope+jwe', cty: 'comity-envelope+jws', iss, aud,
      })
      .encrypt(recipient_jwk);
    return { jwe, inner_jws: inner };
  },

  // (c) a compact JWS (receipt, signed error): Ed25519 only, typ checked.
  async verify_compact({ jws, jwk, typ }) {
    return verifyCompact(jws, jwk, typ);
  },

  // (c) one signature of a General JSON JWS, as its own flattened JWS.
  async verify_flattened({ jws, jwk, typ }) {
    const { payload, protectedHeader } = await jose.flattenedVerify(jws, jwk, { algorithms: ['Ed25519'] });
    requireTyp(protectedHeader, typ);
    return { header: protectedHeader, payload: dec.decode(payload) };
  },

  // (c) what SPEC warns against: generalVerify succeeds when ANY one signature verifies.
  async verify_general({ jws, jwk }) {
    const { payload, protectedHeader } = await jose.generalVerify(jws, jwk, { algorithms: ['Ed25519'] });
    return { header: protectedHeader, payload: dec.decode(payload) };
  },

  // (d) decrypt an attachment chunk under its 32-byte content key.
  // declare_crit: false shows what happens to an implementer who omits the crit option.
  async open_chunk({ jwe, key, declare_crit = true }) {
    const options = declare_crit ? CHUNK_DECRYPT : { ...CHUNK_DECRYPT, crit: undefined };
    const { plaintext, protectedHeader } = await jose.compactDecrypt(jwe, b64d(key), options);
    requireTyp(protectedHeader, 'comity-chunk+jwe');
    return { header: protectedHeader, plaintext: b64e(plaintext) };
  },

  // (d) seal an attachment chunk.
  async seal_chunk({ plaintext, key, att, seq, last }) {
    const jwe = await new jose.CompactEncrypt(b64d(plaintext))
      .setProtectedHeader({
        alg: 'dir', enc: 'A256GCM', typ: 'comity-chunk+jwe', att, seq, last, crit: ['att', 'seq', 'last'],
      })
      .encrypt(b64d(key), { crit: CHUNK_CRIT });
    return { jwe };
  },
};

async function run(request) {
  const handler = ops[request.op];
  if (handler === undefined) return { ok: false, error: `unknown op ${request.op}` };
  try {
    return { ok: true, ...(await handler(request)) };
  } catch (e) {
    return { ok: false, error: `${e.code ?? e.name}: ${e.message}` };
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { ops: requests } = JSON.parse(Buffer.concat(chunks).toString('utf-8'));
const results = [];
for (const request of requests) results.push(await run(request));
process.stdout.write(JSON.stringify(results));
