// uPlot options shared by the middle row's charts.
import uPlot from "uplot";

export function plotSize(box, height) {
  return { width: Math.max(240, (box.clientWidth || 480) - 4), height };
}

export function axes(fmt) {
  return [
    { stroke: "#64748b", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#e2e8f0" } },
    {
      stroke: "#64748b",
      grid: { stroke: "#eef2f7" },
      ticks: { stroke: "#e2e8f0" },
      size: 70,
      values: (u, splits) => splits.map((v) => (v === null ? "" : fmt(v))),
    },
  ];
}

export const bars = uPlot.paths.bars({ size: [0.7, 60] });
