// Checks the packaging files that cannot be built here (no container registry):
// - the Dockerfile: dockerfile-utils' validator (the linter of the VS Code Docker
//   extension's language server), then what the build would need: every COPY source
//   exists in the build context and is not excluded by .dockerignore, every
//   `COPY --from` and `--target` names a stage, every script a RUN calls exists and is
//   executable;
// - docker-compose.yml: every build target is a stage of the Dockerfile, every bind-mounted
//   file exists, every image a service runs is built by another service.
// Usage: node check.mjs <repo root>. Exit status 1 with one line per problem.
import { readFileSync, existsSync, statSync, accessSync, constants } from "node:fs";
import { join, resolve } from "node:path";
import { validate } from "dockerfile-utils";
import { DockerfileParser } from "dockerfile-ast";
import { parse as parseYaml } from "yaml";

const root = resolve(process.argv[2] ?? "../..");
const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

// --- Dockerfile ---
const dockerfilePath = join(root, "Dockerfile");
const text = readFileSync(dockerfilePath, "utf8");
for (const d of validate(text)) {
  problem(`Dockerfile:${d.range.start.line + 1}`, `${d.message} (dockerfile-utils code ${d.code})`);
}
const dockerfile = DockerfileParser.parse(text);
const stages = new Set();
for (const from of dockerfile.getFROMs()) {
  const name = from.getBuildStage();
  if (name) stages.add(name);
}
const ignored = existsSync(join(root, ".dockerignore"))
  ? readFileSync(join(root, ".dockerignore"), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"))
  : [];
// .dockerignore patterns as this file uses them: a path or `**/name`.
const isIgnored = (path) =>
  ignored.some((p) =>
    p.startsWith("**/")
      ? path.split("/").includes(p.slice(3))
      : path === p || path.startsWith(`${p}/`),
  );
for (const ins of dockerfile.getInstructions()) {
  const line = ins.getRange().start.line + 1;
  const keyword = ins.getKeyword();
  const where = `Dockerfile:${line}`;
  if (keyword === "COPY" || keyword === "ADD") {
    const fromFlag = ins.getFlags?.().find((f) => f.getName() === "from");
    const args = ins.getArguments().map((a) => a.getValue());
    if (fromFlag) {
      if (!stages.has(fromFlag.getValue())) problem(where, `COPY --from=${fromFlag.getValue()}: no such stage`);
      continue;
    }
    for (const src of args.slice(0, -1)) {
      const path = src.replace(/^\.\/?/, "").replace(/\/$/, "");
      if (path === "") continue; // the whole context
      if (!existsSync(join(root, path))) problem(where, `${keyword} source ${src} does not exist`);
      else if (isIgnored(path)) problem(where, `${keyword} source ${src} is excluded by .dockerignore`);
    }
  }
  if (keyword === "RUN") {
    for (const m of ins.getTextContent().matchAll(/(?<![\w/.-])(scripts\/[\w.-]+)/g)) {
      const script = join(root, m[1]);
      if (!existsSync(script)) {
        problem(where, `RUN calls ${m[1]}, which does not exist`);
        continue;
      }
      try {
        if (m[1].endsWith(".sh") && !/\.\s+scripts\//.test(ins.getTextContent())) accessSync(script, constants.X_OK);
      } catch {
        problem(where, `RUN calls ${m[1]}, which is not executable`);
      }
    }
  }
}

// --- docker-compose.yml ---
const composePath = join(root, "docker-compose.yml");
const compose = parseYaml(readFileSync(composePath, "utf8"));
const services = compose?.services ?? {};
if (Object.keys(services).length === 0) problem("docker-compose.yml", "no services");
const built = new Set();
for (const [name, svc] of Object.entries(services)) {
  if (svc.build) {
    const context = typeof svc.build === "string" ? svc.build : svc.build.context ?? ".";
    if (resolve(root, context) !== root) problem(`docker-compose.yml ${name}`, `build context ${context} is not the repo`);
    const target = svc.build.target;
    if (target && !stages.has(target)) problem(`docker-compose.yml ${name}`, `build target ${target} is no stage of the Dockerfile`);
    if (svc.image) built.add(svc.image);
  }
}
for (const [name, svc] of Object.entries(services)) {
  if (!svc.build && svc.image && !built.has(svc.image)) {
    problem(`docker-compose.yml ${name}`, `image ${svc.image} is built by no service`);
  }
  for (const v of svc.volumes ?? []) {
    const source = typeof v === "string" ? v.split(":")[0] : v.source;
    if (source.startsWith("./") || source.startsWith("/")) {
      const path = resolve(root, source);
      if (!existsSync(path)) problem(`docker-compose.yml ${name}`, `bind mount ${source} does not exist`);
      else if (v.includes?.("initdb.d") && !statSync(path).isFile()) {
        problem(`docker-compose.yml ${name}`, `init script ${source} is not a file`);
      }
    }
  }
}

for (const p of problems) console.error(p);
if (problems.length > 0) {
  console.error(`${problems.length} packaging problem(s)`);
  process.exit(1);
}
console.log(`Dockerfile (${stages.size} stages) and docker-compose.yml (${Object.keys(services).length} services): ok`);
