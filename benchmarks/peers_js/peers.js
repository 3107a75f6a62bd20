'use strict'
// The npm delta-crdts add-wins OR-set ("aworset") on the workloads of
// benchmarks/peers.py. Reads one JSON request on stdin, writes one JSON answer
// on stdout; everything is timed here, in this process, so no pipe or
// serialisation between Python and Node is inside a timed region.
//
// Deltas and states are encoded with delta-crdts-msgpack-codec, the codec the
// delta-crdts package itself depends on (msgpack5 with extension type 0x40 for
// a Map and 0x41 for a Set). A replica applies what the codec decodes, as it
// would from the network.

const fs = require('fs')
const path = require('path')
const CRDT = require('delta-crdts')
const codec = require('delta-crdts-msgpack-codec')
const DotSet = require('delta-crdts/src/dot-set')
const CausalContext = require('delta-crdts/src/causal-context')

const TYPE_NAME = 'aworset'
const Replica = CRDT(TYPE_NAME) // id -> replica with .add(), .apply(), .state(), .value()
const SetType = CRDT.type(TYPE_NAME) // the static definition: .join(s1, s2)

function versionOf (name) {
  const file = path.join(__dirname, 'node_modules', name, 'package.json')
  return JSON.parse(fs.readFileSync(file, 'utf8')).version
}

function now () {
  return process.hrtime.bigint()
}

function seconds (ns) {
  return Number(ns) / 1e9
}

function bytes (n) {
  return `${n.toLocaleString('en-US')} B`
}

function collectGarbage () {
  if (typeof global.gc === 'function') global.gc()
}

// Maps and Sets written as arrays of their entries, so JSON can hold a decoded delta.
function jsonReplacer (_key, value) {
  if (value instanceof Map || value instanceof Set) return Array.from(value)
  return value
}

// Operations per second of run(prepare()) over `repeats` repeats. A repeat
// times as many runs as it takes to last minSeconds; prepare() is not timed.
// One untimed run first warms the JIT.
function rates (prepare, run, count, req) {
  run(prepare())
  const out = []
  for (let r = 0; r < req.repeats; r++) {
    collectGarbage()
    let ns = 0n
    let ops = 0
    do {
      const input = prepare()
      const began = now()
      run(input)
      ns += now() - began
      ops += count
    } while (seconds(ns) < req.min_seconds)
    out.push(ops / seconds(ns))
  }
  return out
}

function makeNames (req) {
  return (i) => req.member_prefix + String(i).padStart(req.member_digits, '0')
}

// What a replica holds: its members with their dots, and its causal context.
function canonical (state) {
  const entries = Array.from(state.ds.entries()).sort()
  const context = Array.from(state.cc.cc.entries()).sort()
  return JSON.stringify([entries, context, Array.from(state.cc.dc.values()).length])
}

// A replica of `id` holding members start .. start+n-1, added one by one by
// `id`, so member start+i has the dot [id, i+1]. Adding is quadratic in this
// library (every add scans and copies the whole set), so beyond
// build_by_adds_max the same state is made directly from the library's own
// DotSet and CausalContext and applied to a fresh replica; `checkConstruction`
// holds that to a build by adds.
function grown (req, name, id, start, n) {
  if (n <= req.build_by_adds_max) {
    const replica = Replica(id)
    for (let i = 0; i < n; i++) replica.add(name(start + i))
    return replica
  }
  return constructed(name, id, start, n)
}

function constructed (name, id, start, n) {
  const ds = new Map()
  for (let i = 0; i < n; i++) ds.set(DotSet.keyForDot([id, i + 1]), name(start + i))
  const state = new DotSet(ds, new CausalContext(n ? new Map([[id, n]]) : undefined))
  const replica = Replica(id)
  replica.apply(state)
  return replica
}

function checkConstruction (name, id, byAdds, n) {
  const made = constructed(name, id, 0, n)
  if (canonical(made.state()) !== canonical(byAdds.state())) {
    throw new Error(`a directly made set of ${n} differs from the one built by adds`)
  }
  if (codec.encode(made.state()).length !== codec.encode(byAdds.state()).length) {
    throw new Error(`a directly made set of ${n} encodes to a different size than the one built by adds`)
  }
}

// The delta of one add on a copy of `replica`, made the way the add mutator
// means to (the join of its two parts, removeValue and add), not the way it
// does (see benchmarks/peers.py): the size of a delta of one new dot in this codec.
function intendedDeltaBytes (replica, id, member) {
  const copy = Replica(id)
  copy.apply(replica.state())
  const s = copy.state()
  const delta = SetType.join(s.removeValue(member), s.add(id, member))
  return codec.encode(delta).length
}

function deltaSizes (req, name, out) {
  const id = req.replica_a
  let replica = Replica(id)
  let count = 0
  for (const n of req.sizes) {
    if (count > n) throw new Error(`sizes ${req.sizes} are closer together than ${req.probes} probes`)
    if (n > req.build_by_adds_max && count < n) {
      if (count > 0 && !out.construction_checked_at) {
        checkConstruction(name, id, replica, count)
        out.construction_checked_at = count
      }
      replica = constructed(name, id, 0, n)
      out.constructed_sizes.push(n)
      count = n
    }
    while (count < n) replica.add(name(count++))
    if (replica.value().size !== n) throw new Error(`the set holds ${replica.value().size} members, expected ${n}`)
    const stateBytes = codec.encode(replica.state()).length
    const intended = intendedDeltaBytes(replica, id, name(count))
    const deltaBytes = []
    for (let k = 0; k < req.probes; k++) {
      const delta = replica.add(name(count++))
      deltaBytes.push(codec.encode(delta).length)
    }
    out.delta_sizes.push({ set_size: n, delta_bytes: deltaBytes, state_bytes: stateBytes, intended_delta_bytes: intended })
  }
}

function deltaMerges (req, name, out) {
  for (const n of req.merge_deltas) {
    const source = Replica(req.replica_b)
    const encoded = []
    for (let i = 0; i < n; i++) encoded.push(codec.encode(source.add(name(i))))
    const texts = encoded.map((buf) => JSON.stringify(codec.decode(buf), jsonReplacer))
    const check = Replica(req.replica_a)
    for (const buf of encoded) check.apply(codec.decode(buf))
    if (check.value().size !== n) throw new Error(`merging ${n} deltas gave ${check.value().size} members`)
    out.delta_merges.push({
      count: n,
      bytes: encoded.reduce((sum, buf) => sum + buf.length, 0),
      rates: rates(
        () => Replica(req.replica_a),
        (replica) => {
          for (const buf of encoded) replica.apply(codec.decode(buf))
        },
        n,
        req
      ),
      baselines: [
        {
          name: `JSON.parse of the same deltas as JSON text (${bytes(texts.reduce((s, t) => s + t.length, 0))})`,
          rates: rates(
            () => null,
            () => {
              for (const text of texts) JSON.parse(text)
            },
            n,
            req
          )
        },
        {
          name: 'delta-crdts-msgpack-codec decode alone of the same bytes (nothing applied)',
          rates: rates(
            () => null,
            () => {
              for (const buf of encoded) codec.decode(buf)
            },
            n,
            req
          )
        }
      ]
    })
  }
}

function stateMerges (req, name, out) {
  for (const n of req.merge_states) {
    const local = grown(req, name, req.replica_a, 0, n)
    const remote = grown(req, name, req.replica_b, n, n)
    const encoded = codec.encode(remote.state())
    const text = JSON.stringify(codec.decode(encoded), jsonReplacer)
    const prepare = () => {
      const replica = Replica(req.replica_a)
      replica.apply(local.state())
      return replica
    }
    const check = prepare()
    check.apply(codec.decode(encoded))
    if (check.value().size !== 2 * n) throw new Error(`merging two sets of ${n} gave ${check.value().size} members`)
    out.state_merges.push({
      count: n,
      bytes: encoded.length,
      rates: rates(prepare, (replica) => replica.apply(codec.decode(encoded)), n, req),
      baselines: [
        {
          name: `JSON.parse of the same state as JSON text (${bytes(text.length)})`,
          rates: rates(() => null, () => JSON.parse(text), n, req)
        },
        {
          name: 'delta-crdts-msgpack-codec decode alone of the same bytes (nothing applied)',
          rates: rates(() => null, () => codec.decode(encoded), n, req)
        }
      ]
    })
  }
}

function main () {
  const req = JSON.parse(fs.readFileSync(0, 'utf8'))
  const name = makeNames(req)
  const out = {
    implementation: 'delta-crdts',
    type: TYPE_NAME,
    versions: {
      node: process.version,
      'delta-crdts': versionOf('delta-crdts'),
      'delta-crdts-msgpack-codec': versionOf('delta-crdts-msgpack-codec'),
      msgpack5: versionOf('msgpack5')
    },
    gc_between_repeats: typeof global.gc === 'function',
    first_member: name(0),
    constructed_sizes: [],
    construction_checked_at: 0,
    delta_sizes: [],
    delta_merges: [],
    state_merges: []
  }
  deltaSizes(req, name, out)
  deltaMerges(req, name, out)
  stateMerges(req, name, out)
  process.stdout.write(JSON.stringify(out) + '\n')
}

main()
