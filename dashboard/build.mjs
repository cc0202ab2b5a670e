// Bundles the dashboard into dist/: app.js (uPlot included, minified), app.css and
// index.html, each with a gzip copy (.gz) that the notifier serves to browsers that
// accept gzip, so it compresses nothing at run time. Run through
// scripts/build-dashboard.sh, which skips the build when nothing changed.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const dist = new URL("./dist/", import.meta.url).pathname;
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome100", "firefox100", "safari15"],
  outdir: dist,
  legalComments: "eof",
  logLevel: "warning",
});
await build({
  entryPoints: { app: "src/styles.css" },
  bundle: true,
  minify: true,
  outdir: dist,
  logLevel: "warning",
});
copyFileSync("src/index.html", dist + "index.html");

for (const name of ["app.js", "app.css", "index.html"]) {
  const bytes = readFileSync(dist + name);
  const gz = gzipSync(bytes, { level: 9 });
  writeFileSync(dist + name + ".gz", gz);
  console.log(`dashboard: ${name} ${bytes.length} B, ${gz.length} B gzipped`);
}
