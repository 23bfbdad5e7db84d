// The main job's engine: the NIAH-style report. Runs every preset (report.hpp's list) and the full
// cache over one grid per task (report.hpp's default_report) and writes, under --out (default
// out/niah):
//   cases.csv    every (section, policy, budget, context, depth, seed) with its metrics
//   summary.md   per section, the policy x budget table (also printed)
// scripts/report.sh then draws the figures and the index from cases.csv (bench/niah/figures.py).
//
// Usage: niah_report --help (CLI11). --tasks picks sections by name (single, single_long, multi_key,
// multi_value, multi_query, long_sentence, long_value); --contexts, --depths, --seeds and
// --distractors apply to every picked section.
#include "report.hpp"

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace {

struct cell {
  double success = 0, recall = 0, fidelity = 0, ms_big = 0;
  std::size_t bytes_big = 0;
  int n = 0, n_big = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvevict's NIAH-style report: every preset over synthetic needle-in-a-haystack caches, one section "
               "per task. Writes cases.csv and summary.md; scripts/report.sh then draws the figures."};
  bool full = false;
  std::string out = "out/niah";
  std::vector<std::string> tasks;
  std::vector<int> contexts;
  std::vector<double> depths;
  int seeds = 0, distractors = -1, threads = 2;
  std::vector<std::string> names;
  for (const auto& g : niah_report::default_report(false)) names.push_back(g.name);
  app.add_flag("--full", full, "context steps of 100 and 3 seeds (the KVCache-Factory grid)");
  app.add_option("--tasks", tasks, "sections to run, comma-separated (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember(names));
  app.add_option("--seeds", seeds, "seeds 1..N for every section")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads across sequences")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "output folder")->capture_default_str();
  app.add_option("--contexts", contexts, "context lengths for every section, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(200, 1 << 20));
  app.add_option("--depths", depths, "needle depths in [0, 1] for every section, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--distractors", distractors, "decoy needles per sequence")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  std::vector<niah_report::grid> sections = niah_report::default_report(full);
  if (!tasks.empty()) {
    std::vector<niah_report::grid> picked;
    for (const auto& name : tasks)
      for (const auto& g : sections)
        if (g.name == name) picked.push_back(g);
    sections = picked;
  }
  for (auto& g : sections) {
    if (!contexts.empty()) g.contexts = contexts;
    if (!depths.empty()) g.depths = depths;
    if (seeds > 0) {
      g.seeds.clear();
      for (int s = 1; s <= seeds; ++s) g.seeds.push_back(static_cast<std::uint64_t>(s));
    }
    if (distractors >= 0) g.distractors = distractors;
  }
  std::filesystem::create_directories(out);
  std::size_t total = 0;
  std::printf("NIAH report, %d threads:\n", threads);
  for (const auto& g : sections) {
    const std::size_t n = g.contexts.size() * g.depths.size() * g.seeds.size();
    total += n;
    std::printf("  %-14s %4zu sequences (contexts %d..%d, %zu depths, %zu seeds)\n", g.name.c_str(), n,
                g.contexts.front(), g.contexts.back(), g.depths.size(), g.seeds.size());
  }
  const auto t0 = std::chrono::steady_clock::now();
  double last_print = -1e9;
  const auto results = niah_report::run(sections, threads, [&](const niah_report::progress_info& p) {
    const double s = niah_report::detail::ms_since(t0) / 1000.0;
    if (p.done == p.total || s - last_print >= 5.0) {
      last_print = s;
      const double left = p.tokens_done > 0 ? s * (p.tokens_total - p.tokens_done) / p.tokens_done : 0.0;
      std::printf("  [%4zu/%zu sequences] %6.1f s elapsed, about %.0f s left\n", p.done, p.total, s, left);
      std::fflush(stdout);
    }
  });

  std::ofstream csv(out + "/cases.csv");
  csv << "section,policy,budget,context,depth,seed,success,answer_recall,fidelity,plan_ms_per_layer,"
         "extra_bytes_per_layer\n";
  for (const auto& r : results)
    csv << r.section << ',' << r.policy << ',' << r.budget << ',' << r.context << ',' << r.depth << ',' << r.seed
        << ',' << r.success << ',' << r.recall << ',' << r.fidelity << ',' << r.plan_ms << ',' << r.extra_bytes
        << '\n';

  std::ostringstream md;
  md << "Synthetic NIAH (kvevict support/niah.hpp): 2 layers x 4 KV heads x 64 dims, 16 query heads. "
        "Cells: success % / answer recall / fidelity. Time: plan (scoring + selection) per layer at the "
        "section's longest context, budget "
     << sections.front().budgets.front() << ", host, one thread.\n";
  char buf[160];
  for (const auto& g : sections) {
    std::vector<std::string> order;
    std::map<std::string, std::map<int, cell>> table;
    const int big = *std::max_element(g.contexts.begin(), g.contexts.end());
    std::size_t n = 0;
    for (const auto& r : results) {
      if (r.section != g.name) continue;
      ++n;
      if (table.find(r.policy) == table.end()) order.push_back(r.policy);
      auto& c = table[r.policy][r.budget];
      c.success += r.success, c.recall += r.recall, c.fidelity += r.fidelity, ++c.n;
      if (r.context == big) c.ms_big += r.plan_ms, c.bytes_big = std::max(c.bytes_big, r.extra_bytes), ++c.n_big;
    }
    md << "\n### " << g.name << " (" << g.contexts.size() * g.depths.size() * g.seeds.size() << " sequences, contexts "
       << g.contexts.front() << ".." << g.contexts.back() << ")\n\n| policy |";
    for (int b : g.budgets) md << " budget " << b << " |";
    md << " ms/layer @" << big << " | extra KiB/layer |\n|---|";
    for (std::size_t i = 0; i < g.budgets.size(); ++i) md << "---|";
    md << "---|---|\n";
    for (const auto& p : order) {
      md << "| " << p << " |";
      for (int b : g.budgets) {
        const auto& c = table[p][b];
        std::snprintf(buf, sizeof buf, " %.1f / %.3f / %.3f |", 100.0 * c.success / c.n, c.recall / c.n,
                      c.fidelity / c.n);
        md << buf;
      }
      const auto& c = table[p][g.budgets.front()];
      std::snprintf(buf, sizeof buf, " %.2f | %.0f |\n", c.n_big ? c.ms_big / c.n_big : 0.0, c.bytes_big / 1024.0);
      md << buf;
    }
  }
  std::ofstream(out + "/summary.md") << md.str();
  std::printf("\n%s\nwrote %s/cases.csv and %s/summary.md (%.1f s)\n", md.str().c_str(), out.c_str(), out.c_str(),
              niah_report::detail::ms_since(t0) / 1000.0);
  return 0;
}
