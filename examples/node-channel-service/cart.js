#!/usr/bin/env node
// A cart service in Node.js against Unistock, driven by the repository's proto/ files (or, with
// --from-reflection, by the server's reflection alone). It uses nothing of Unistock's Python code.
//
// Usage: UNISTOCK_TOKEN=<channel token> node cart.js [options] SKU LOCATION
// See README.md beside this file for the journey it plays, its options and its exit codes.
'use strict';

const { EventEmitter } = require('node:events');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { GrpcReflection } = require('grpc-js-reflection-client');
const googleProtoFiles = require('google-proto-files');

const INVENTORY = 'unistock.v1.InventoryService';
const HEALTH = 'grpc.health.v1.Health';
// The file of proto/ that declares InventoryService and its messages.
const INVENTORY_PROTO = 'unistock/v1/inventory.proto';
// Field names as in the .proto files; 64-bit integers and enums as strings.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };
// Every unary call gives up after this long; the watch waits at most this long for a change.
const DEADLINE_MS = 10_000;

const USAGE = `usage: node cart.js [options] SKU LOCATION

Plays a cart journey against Unistock: reflection, health, GetAvailability, Reserve (CART),
an oversell refused with its short lines, WatchAvailability seeing ReleaseReservation.

environment:
  UNISTOCK_TARGET      host:port of the server (default localhost:50051)
  UNISTOCK_TOKEN       bearer token of role channel or admin (required)
  UNISTOCK_PROTO_DIR   the repository's proto/ directory (default ../../proto from this file)

options:
  -q, --quantity N         units the cart reserves (default 1)
  --reservation-id ID      the cart's reservation id (default cart-<time>)
  --proto-dir DIR          as UNISTOCK_PROTO_DIR
  --from-reflection        take the contract from the server's reflection, not from proto/
  -h, --help               show this help

exit codes: 0 the journey passed; 1 an error (the message names the call and the gRPC code)`;

/** A failed step: its message names the call and, for a gRPC error, the status code. */
class StepError extends Error {}

/**
 * The gRPC status code and details of an error: grpc-js errors carry them as fields;
 * grpc-js-reflection-client passes them on only in its message ("Error: 12 UNIMPLEMENTED: ...").
 */
function grpcStatus(err) {
  if (typeof err.code === 'number') return { code: err.code, details: err.details };
  const match = /(\d+) [A-Z_]+: (.*)$/s.exec(err.message || '');
  return match ? { code: Number(match[1]), details: match[2] } : null;
}

/** Wraps an error of `call` into a StepError "<call> failed: <CODE>: <details> (short: ...)". */
function callError(call, err, contract) {
  if (err instanceof StepError) return err;
  const status = grpcStatus(err);
  if (status === null) return new StepError(`${call} failed: ${err.message}`);
  const short = contract ? shortLines(err, contract) : [];
  const extra = short.length ? ` (short: ${short.join('; ')})` : '';
  return new StepError(`${call} failed: ${grpc.status[status.code]}: ${status.details}${extra}`);
}

/** The protobufjs type google.rpc.Status, from Google's published rpc/status.proto. */
function statusType() {
  return protobuf
    .loadSync(googleProtoFiles.getProtoPath('rpc', 'status.proto'))
    .lookupType('google.rpc.Status');
}

/**
 * The short lines of a FAILED_PRECONDITION Reserve, as readable strings: the error's
 * grpc-status-details-bin trailer is a google.rpc.Status whose details hold a
 * unistock.v1.InsufficientStock (decoded with the contract's own type).
 */
function shortLines(err, contract) {
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw.length) return [];
  const status = statusType().decode(raw[0]);
  const lines = [];
  for (const detail of status.details) {
    const typeName = detail.type_url.slice(detail.type_url.lastIndexOf('/') + 1);
    if (typeName !== 'unistock.v1.InsufficientStock') continue;
    const type = contract.root.lookupType(typeName);
    const info = type.toObject(type.decode(detail.value), LOADER_OPTIONS);
    for (const l of info.lines) {
      lines.push(
        `${l.sku}@${l.location_id} requested ${l.requested}, available ${l.available}, ` +
          `shortfall ${l.shortfall}`,
      );
    }
  }
  return lines;
}

/** Calls a unary method; resolves with its answer, rejects with the gRPC error as it came. */
function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, metadata, { deadline }, (err, answer) =>
      err ? reject(err) : resolve(answer),
    );
  });
}

/** Calls a unary method; rejects with a StepError naming it (and any short lines). */
function unary(client, method, request, metadata, contract) {
  return call(client, method, request, metadata).catch((err) => {
    throw callError(method, err, contract);
  });
}

/** The service constructor `name` ("pkg.Service") of a protobufjs root. */
function serviceClient(root, name) {
  const pkg = grpc.loadPackageDefinition(protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS));
  const ctor = name.split('.').reduce((obj, part) => (obj ? obj[part] : undefined), pkg);
  if (typeof ctor !== 'function') throw new StepError(`the contract has no service ${name}`);
  return ctor;
}

/** Reflection: v1 when the server has it, else v1alpha. Resolves {client, version, services}. */
async function reflection(target) {
  for (const version of ['v1', 'v1alpha']) {
    const client = new GrpcReflection(target, grpc.credentials.createInsecure(), {}, version);
    try {
      const services = await client.listServices('', { deadline: Date.now() + DEADLINE_MS });
      return { client, version, services };
    } catch (err) {
      const status = grpcStatus(err);
      if (version === 'v1' && status && status.code === grpc.status.UNIMPLEMENTED) continue;
      throw callError(`grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`, err);
    }
  }
  throw new StepError('unreachable');
}

/** The protobufjs root holding `symbol`, from the server's reflection. */
async function reflectedRoot(reflect, symbol) {
  try {
    const descriptor = await reflect.client.getDescriptorBySymbol(symbol, {
      deadline: Date.now() + DEADLINE_MS,
    });
    return descriptor.getProtobufJsRoot();
  } catch (err) {
    throw callError(`grpc.reflection.${reflect.version}.ServerReflection (${symbol})`, err);
  }
}

/** The contract (a protobufjs root with InventoryService) from proto/ files. */
function rootFromProtoDir(protoDir) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    path.isAbsolute(target) ? target : path.join(protoDir, target);
  try {
    root.loadSync(INVENTORY_PROTO, { keepCase: true });
  } catch (err) {
    throw new StepError(`cannot load ${INVENTORY_PROTO} from ${protoDir}: ${err.message}`);
  }
  return root;
}

function pos(level) {
  return `${level.sku}@${level.location_id}`;
}

function iso(timestamp) {
  if (!timestamp) return 'never';
  return new Date(Number(timestamp.seconds) * 1000).toISOString().replace('.000Z', 'Z');
}

/**
 * A WatchAvailability stream on one position, keeping its latest level (by version) and whether
 * the snapshot is complete. until() waits, at most DEADLINE_MS, for a condition on them.
 */
class Watch {
  constructor(inventory, key, metadata) {
    this.last = null;
    this.snapshotComplete = false;
    this.failure = null;
    this.changed = new EventEmitter();
    this.stream = inventory.WatchAvailability(
      { skus: [key.sku], location_ids: [key.location_id] },
      metadata,
    );
    this.stream.on('data', (message) => {
      for (const level of message.levels) {
        const mine = level.sku === key.sku && level.location_id === key.location_id;
        if (mine && (!this.last || BigInt(level.version) > BigInt(this.last.version))) {
          this.last = level;
        }
      }
      if (message.snapshot_complete) this.snapshotComplete = true;
      this.changed.emit('change');
    });
    this.stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) this.failure = callError('WatchAvailability', err);
      this.changed.emit('change');
    });
    this.stream.on('end', () => {
      this.failure = this.failure || new StepError('WatchAvailability failed: the stream ended');
      this.changed.emit('change');
    });
  }

  /** Resolves with the latest level once condition() holds; rejects on error or timeout. */
  until(what, condition) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (condition()) done(null);
        else if (this.failure) done(this.failure);
      };
      const timer = setTimeout(
        () => done(new StepError(`WatchAvailability failed: no ${what} within ${DEADLINE_MS} ms`)),
        DEADLINE_MS,
      );
      const done = (err) => {
        clearTimeout(timer);
        this.changed.off('change', check);
        if (err) reject(err);
        else resolve(this.last);
      };
      this.changed.on('change', check);
      check();
    });
  }

  close() {
    this.stream.cancel();
  }
}

/** Prints one line of the journey: the step, then what happened. */
function say(step, text) {
  process.stdout.write(`${step.padEnd(12)}${text}\n`);
}

/** The journey's settings from the command line and the environment (StepError if wrong). */
function settings(argv, env) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        quantity: { type: 'string', short: 'q', default: '1' },
        'reservation-id': { type: 'string' },
        'proto-dir': { type: 'string' },
        'from-reflection': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new StepError(`${err.message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) return null;
  if (positionals.length !== 2) throw new StepError(`expected SKU and LOCATION\n${USAGE}`);
  const quantity = Number(values.quantity);
  if (!Number.isInteger(quantity) || quantity < 1) {
    throw new StepError(`--quantity must be a whole number >= 1, not ${values.quantity}`);
  }
  if (!env.UNISTOCK_TOKEN) {
    throw new StepError(
      'UNISTOCK_TOKEN is not set: give a token of role channel, e.g. ' +
        'UNISTOCK_TOKEN=<token> node cart.js SKU LOCATION',
    );
  }
  return {
    sku: positionals[0],
    location: positionals[1],
    quantity,
    token: env.UNISTOCK_TOKEN,
    target: env.UNISTOCK_TARGET || 'localhost:50051',
    protoDir: path.resolve(
      values['proto-dir'] || env.UNISTOCK_PROTO_DIR || path.join(__dirname, '..', '..', 'proto'),
    ),
    fromReflection: values['from-reflection'],
    cartId: values['reservation-id'] || `cart-${Date.now().toString(36)}`,
  };
}

/** Plays the journey, printing one line per step; rejects with a StepError on the first failure. */
async function journey(argv, env) {
  const config = settings(argv, env);
  if (config === null) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const { sku, location, quantity, target, cartId } = config;
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${config.token}`);
  const credentials = grpc.credentials.createInsecure();

  // 1. Reflection: is the inventory service there?
  const reflect = await reflection(target);
  if (!reflect.services.includes(INVENTORY)) {
    throw new StepError(`reflection: ${INVENTORY} is not served (${reflect.services.join(', ')})`);
  }
  say(
    'reflection',
    `${reflect.services.length} services (grpc.reflection.${reflect.version}); ${INVENTORY} is served`,
  );

  const contract = config.fromReflection
    ? { root: await reflectedRoot(reflect, INVENTORY), from: `reflection ${reflect.version}` }
    : {
        root: rootFromProtoDir(config.protoDir),
        from: path.join(config.protoDir, INVENTORY_PROTO),
      };
  const Inventory = serviceClient(contract.root, INVENTORY);
  say('contract', `${INVENTORY} from ${contract.from}`);
  const inventory = new Inventory(target, credentials);

  // 2. Health, with the Health service's own descriptor taken from reflection.
  const Health = serviceClient(await reflectedRoot(reflect, HEALTH), HEALTH);
  const health = new Health(target, credentials);
  const checked = await unary(health, 'Check', { service: INVENTORY }, new grpc.Metadata());
  say('health', `${INVENTORY}: ${checked.status}`);
  if (checked.status !== 'SERVING') {
    throw new StepError(`Check failed: ${INVENTORY} is ${checked.status}`);
  }

  // 3. Availability of the SKU at the location.
  const key = { sku, location_id: location };
  const got = await unary(inventory, 'GetAvailability', { keys: [key] }, metadata, contract);
  const before = got.levels[0];
  say(
    'available',
    `${pos(before)}: on_hand ${before.on_hand}, reserved ${before.reserved}, ` +
      `available ${before.available} (version ${before.version})`,
  );

  // 4. The cart holds `quantity` units.
  const reserved = await unary(
    inventory,
    'Reserve',
    { reservation_id: cartId, kind: 'CART', channel: 'web', lines: [{ ...key, quantity }] },
    metadata,
    contract,
  );
  const cart = reserved.reservation;
  if (reserved.replayed || cart.state !== 'ACTIVE') {
    throw new StepError(
      `Reserve failed: ${cartId} was made before (now ${cart.state}): give another --reservation-id`,
    );
  }
  const lines = cart.lines.map((l) => `${l.quantity} x ${l.sku}@${l.location_id}`).join(', ');
  say(
    'reserve',
    `${cart.reservation_id} ${cart.kind} ${cart.state}: ${lines}, expires ${iso(cart.expires_at)}`,
  );

  // 5-6. An oversell refused, then the release seen on the watch. Whatever fails, the cart is
  // released so that its units do not stay held until it expires.
  const ctx = { inventory, key, metadata, contract, cartId };
  try {
    await oversell(ctx, before);
    await watchTheRelease(ctx);
  } catch (err) {
    await call(inventory, 'ReleaseReservation', { reservation_id: cartId }, metadata).catch(
      () => {},
    );
    throw err;
  }
  say('done', `cart journey of ${sku}@${location} passed`);
}

/** Another cart asks for the whole shelf as it was before ours: refused, with its short lines. */
async function oversell({ inventory, key, metadata, contract, cartId }, before) {
  const id = `${cartId}-oversell`;
  const asked = Math.max(Number(before.available), 1);
  const request = {
    reservation_id: id,
    kind: 'CART',
    channel: 'web',
    lines: [{ ...key, quantity: asked }],
  };
  const refusal = await call(inventory, 'Reserve', request, metadata).then(
    () => null,
    (err) => err,
  );
  if (refusal === null) {
    await call(inventory, 'ReleaseReservation', { reservation_id: id }, metadata).catch(() => {});
    throw new StepError(
      `Reserve failed: ${id} of ${asked} was accepted, expected FAILED_PRECONDITION`,
    );
  }
  if (refusal.code !== grpc.status.FAILED_PRECONDITION) {
    throw callError('Reserve', refusal, contract);
  }
  const short = shortLines(refusal, contract);
  if (!short.length) {
    throw new StepError('Reserve failed: FAILED_PRECONDITION without InsufficientStock details');
  }
  say('oversell', `${id} of ${asked} refused, FAILED_PRECONDITION: ${short.join('; ')}`);
}

/** Watches the position, releases the cart, and shows the units coming back on the watch. */
async function watchTheRelease({ inventory, key, metadata, contract, cartId }) {
  const watch = new Watch(inventory, key, metadata);
  try {
    const now = await watch.until('snapshot', () => watch.snapshotComplete && watch.last);
    say(
      'watch',
      `${pos(now)}: available ${now.available}, reserved ${now.reserved} (version ${now.version})`,
    );
    const request = { reservation_id: cartId };
    const released = await unary(inventory, 'ReleaseReservation', request, metadata, contract);
    say('release', `${released.reservation_id} ${released.state}`);
    const after = await watch.until(
      'change after the release',
      () => BigInt(watch.last.version) > BigInt(now.version),
    );
    say(
      'watch',
      `${pos(after)} changed: available ${now.available} -> ${after.available}, ` +
        `reserved ${now.reserved} -> ${after.reserved} (version ${after.version})`,
    );
  } finally {
    watch.close();
  }
}

async function main() {
  try {
    await journey(process.argv.slice(2), process.env);
    return 0;
  } catch (err) {
    const message = err instanceof StepError ? err.message : `${err.stack || err}`;
    process.stderr.write(`error: ${message}\n`);
    return 1;
  }
}

if (require.main === module) {
  // Exit once the output is written: the gRPC channels would keep the process alive.
  main().then((code) => process.exit(code));
}
