// alloy-lmc: linear mode connectivity on real data (docs/classroom.md). Thin: flags and output
// only; the work is in alloy/lmc.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/html.h"
#include "alloy/core/parallel.h"
#include "alloy/lmc/lmc.h"
#include "alloy/lmc/plot.h"
#include "../common/cli.h"

namespace {

using Clock = std::chrono::steady_clock;

// A progress bar on stderr, drawn only once the work has run for a second.
class Bar {
 public:
  alloy::lmc::Progress callback() {
    return
        [this](size_t done, size_t total, const std::string& what) { update(done, total, what); };
  }
  void update(size_t done, size_t total, const std::string& what) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    if (elapsed < 1.0 || total == 0) return;
    if (done < total && std::chrono::duration<double>(Clock::now() - last_).count() < 0.1) return;
    last_ = Clock::now();
    const int width = 30, filled = int(width * double(done) / double(total));
    std::fprintf(stderr, "\r%-18s [%s%s] %3d%% %6.1fs", what.c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 int(100.0 * double(done) / double(total)), elapsed);
    drawn_ = true;
    if (done == total) finish();
  }
  void finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }
  ~Bar() { finish(); }

 private:
  Clock::time_point start_ = Clock::now(), last_{};
  bool drawn_ = false;
};

// The charts of a path: test and train loss, test and train accuracy along t.
std::vector<std::string> path_charts(
    const std::vector<std::pair<std::string, alloy::lmc::PathResult>>& paths) {
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  std::vector<alloy::lmc::Series> loss, acc;
  for (size_t k = 0; k < paths.size(); ++k) {
    alloy::lmc::Series test{paths[k].first + " test", {}, {}, colors[k % 6], false};
    alloy::lmc::Series train{paths[k].first + " train", {}, {}, colors[k % 6], true};
    alloy::lmc::Series test_acc = test, train_acc = train;
    for (const auto& p : paths[k].second.points) {
      test.x.push_back(p.t);
      test.y.push_back(p.test.loss);
      train.x.push_back(p.t);
      train.y.push_back(p.train.loss);
      test_acc.x.push_back(p.t);
      test_acc.y.push_back(100 * p.test.accuracy);
      train_acc.x.push_back(p.t);
      train_acc.y.push_back(100 * p.train.accuracy);
    }
    loss.push_back(test);
    loss.push_back(train);
    acc.push_back(test_acc);
    acc.push_back(train_acc);
  }
  return {
      alloy::lmc::svg_line_chart("Loss along the path", "t (0 = A, 1 = B)", "cross-entropy", loss),
      alloy::lmc::svg_line_chart("Accuracy along the path", "t (0 = A, 1 = B)", "accuracy (%)",
                                 acc)};
}

std::string fmt(double v, int digits = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

void write_text(const std::string& path, const std::string& text) {
  if (!path.empty()) alloy::write_file_atomic(path, text);
}

}  // namespace

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  alloy::remove_staging_on_signals();  // first: before any thread starts
  CLI::App app{"Linear mode connectivity of MLPs on Fashion-MNIST (docs/classroom.md)."};
  app.require_subcommand(1);
  app.fallthrough();  // --data and -j may also follow the subcommand
  std::string data_dir = alloy::lmc::kFashionMnistDir;
  int threads = 0;
  app.add_option("--data", data_dir, "IDX data set directory (MNIST layout)");
  app.add_option("-j,--threads", threads, "threads (default: all cores)");

  // train
  auto* train = app.add_subcommand("train", "train an MLP with SGD and momentum");
  std::string train_out, layers = "512,512", from, classes, train_json;
  alloy::lmc::TrainOptions topt;
  bool data_seed_set = false;
  uint64_t data_seed = 0;
  bool overwrite = false;
  train->add_option("OUT", train_out, "output model directory")->required();
  train->add_option("--layers", layers, "hidden layer sizes, e.g. 512,512");
  train->add_option("--epochs", topt.epochs, "epochs");
  train->add_option("--seed", topt.seed, "initialisation seed (and data order unless --data-seed)");
  train->add_option("--data-seed", data_seed, "seed of the sample order")
      ->each([&](const std::string&) { data_seed_set = true; });
  train->add_option("--lr", topt.lr, "learning rate");
  train->add_option("--momentum", topt.momentum, "momentum");
  train->add_option("--batch", topt.batch, "minibatch size");
  train->add_option("--from", from, "fine-tune this model instead of a fresh one");
  train->add_option("--classes", classes, "train only on these classes, e.g. 0-4");
  train->add_option("--limit", topt.limit, "use only the first N training images");
  train->add_option("--json", train_json, "write the training log as JSON ('-' for stdout)");
  train->add_flag("--overwrite", overwrite, "replace OUT");

  // eval
  auto* eval = app.add_subcommand("eval", "test and train loss and accuracy of a model");
  std::string eval_model, eval_json;
  eval->add_option("MODEL", eval_model, "model directory")->required();
  eval->add_option("--json", eval_json, "write JSON ('-' for stdout)");

  // path
  auto* path_cmd = app.add_subcommand("path", "loss and accuracy along the path from A to B");
  std::string path_a, path_b, path_json_out, path_csv_out, path_svg_out, path_report;
  alloy::lmc::PathOptions popt;
  path_cmd->add_option("A", path_a, "model at t = 0")->required();
  path_cmd->add_option("B", path_b, "model at t = 1")->required();
  path_cmd->add_option("--method", popt.method, "merge method: linear or slerp")
      ->check(CLI::IsMember({"linear", "slerp"}));
  path_cmd->add_option("--points", popt.points, "points on the path, ends included");
  path_cmd->add_option("--train-limit", popt.train_limit,
                       "evaluate the train set on its first N images");
  path_cmd->add_flag("--repair", popt.repair, "REPAIR every interior point");
  path_cmd->add_option("--json", path_json_out, "write JSON ('-' for stdout)");
  path_cmd->add_option("--csv", path_csv_out, "write the points as CSV");
  path_cmd->add_option("--svg", path_svg_out, "write the loss chart as SVG");
  path_cmd->add_option("--report", path_report, "write an HTML report");

  // align
  auto* align_cmd = app.add_subcommand("align", "permute B's hidden units to match A");
  std::string align_a, align_b, align_out, align_method = "weight", align_json;
  size_t align_samples = 10000;
  align_cmd->add_option("A", align_a, "reference model")->required();
  align_cmd->add_option("B", align_b, "model to permute")->required();
  align_cmd->add_option("-o,--out", align_out, "output model directory (B permuted)")->required();
  align_cmd->add_option("--method", align_method, "weight or activation matching")
      ->check(CLI::IsMember({"weight", "activation"}));
  align_cmd->add_option("--samples", align_samples, "training images for activation matching");
  align_cmd->add_option("--json", align_json, "write the permutations as JSON ('-' for stdout)");
  align_cmd->add_flag("--overwrite", overwrite, "replace OUT");
  std::string align_report;
  align_cmd->add_option("--report", align_report, "write an HTML report");

  // repair
  auto* repair_cmd = app.add_subcommand("repair", "REPAIR the interpolation of A and B at t");
  std::string repair_a, repair_b, repair_out, repair_json, repair_method = "linear";
  double repair_t = 0.5;
  size_t repair_samples = 10000;
  repair_cmd->add_option("A", repair_a, "model at t = 0")->required();
  repair_cmd->add_option("B", repair_b, "model at t = 1 (align it to A first)")->required();
  repair_cmd->add_option("--t", repair_t, "interpolation point")->check(CLI::Range(0.0, 1.0));
  repair_cmd->add_option("--method", repair_method, "merge method: linear or slerp")
      ->check(CLI::IsMember({"linear", "slerp"}));
  repair_cmd->add_option("--samples", repair_samples, "training images for the statistics");
  repair_cmd->add_option("-o,--out", repair_out, "output model directory")->required();
  repair_cmd->add_option("--json", repair_json, "write JSON ('-' for stdout)");
  repair_cmd->add_flag("--overwrite", overwrite, "replace OUT");
  std::string repair_report;
  repair_cmd->add_option("--report", repair_report, "write an HTML report");

  // curve
  auto* curve_cmd =
      app.add_subcommand("curve", "train a quadratic Bezier curve of low loss from A to B");
  std::string curve_a, curve_b, curve_out, curve_json_out, curve_csv_out, curve_svg_out,
      curve_report;
  alloy::lmc::CurveOptions copt;
  curve_cmd->add_option("A", curve_a, "model at t = 0")->required();
  curve_cmd->add_option("B", curve_b, "model at t = 1")->required();
  curve_cmd->add_option("-o,--out", curve_out, "output directory for the control point")
      ->required();
  curve_cmd->add_option("--epochs", copt.epochs, "epochs");
  curve_cmd->add_option("--lr", copt.lr, "learning rate");
  curve_cmd->add_option("--momentum", copt.momentum, "momentum");
  curve_cmd->add_option("--batch", copt.batch, "minibatch size");
  curve_cmd->add_option("--seed", copt.seed, "seed of the sample order and of t");
  curve_cmd->add_option("--points", copt.points, "points on the curve, ends included");
  curve_cmd->add_option("--train-limit", copt.train_limit,
                        "evaluate the train set on its first N images");
  curve_cmd->add_option("--json", curve_json_out, "write JSON ('-' for stdout)");
  curve_cmd->add_option("--csv", curve_csv_out, "write the points as CSV");
  curve_cmd->add_option("--svg", curve_svg_out, "write the loss chart as SVG");
  curve_cmd->add_option("--report", curve_report, "write an HTML report");
  curve_cmd->add_flag("--overwrite", overwrite, "replace OUT");

  // plot
  auto* plot_cmd =
      app.add_subcommand("plot", "draw columns of alloy-lmc CSV files as one SVG chart");
  std::string plot_out, plot_x = "t", plot_title = "alloy-lmc", plot_ylabel;
  std::vector<std::string> plot_inputs, plot_y;
  plot_cmd->add_option("OUT", plot_out, "output SVG")->required();
  plot_cmd->add_option("--input", plot_inputs, "CSV file, optionally FILE=LABEL (repeat)")
      ->required();
  plot_cmd->add_option("--x", plot_x, "x column");
  plot_cmd->add_option("--y", plot_y, "y columns (repeat)")->required();
  plot_cmd->add_option("--title", plot_title, "chart title");
  plot_cmd->add_option("--y-label", plot_ylabel, "y axis label");
  std::string plot_json;
  plot_cmd->add_option("--json", plot_json, "write the plotted numbers as JSON ('-' for stdout)");

  // shared by train
  std::string train_csv, train_svg, train_report;
  train->add_option("--csv", train_csv, "write the training log as CSV");
  train->add_option("--svg", train_svg, "write the training curve as SVG");
  train->add_option("--report", train_report, "write an HTML report");
  std::string eval_report;
  eval->add_option("--report", eval_report, "write an HTML report");

  alloy::tool::add_version_flag(app, "alloy-lmc");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  try {
    if (threads > 0) alloy::set_thread_count(threads);
    Bar bar;
    auto write_json = [](const std::string& path, const nlohmann::json& doc) {
      if (path.empty()) return;
      if (path == "-") {
        std::cout << doc.dump(2) << "\n";
      } else {
        alloy::write_file_atomic(path, doc.dump(2) + "\n");
      }
    };
    if (*plot_cmd) {
      std::vector<alloy::lmc::CsvInput> inputs;
      for (const std::string& arg : plot_inputs) {
        const size_t eq = arg.find('=');
        alloy::lmc::CsvInput in;
        in.file = arg.substr(0, eq);
        in.label = eq == std::string::npos ? in.file : arg.substr(eq + 1);
        in.table = alloy::lmc::parse_csv(alloy::read_text_file(in.file), in.file);
        inputs.push_back(std::move(in));
      }
      const auto series = alloy::lmc::csv_series(inputs, plot_x, plot_y);
      const std::string y_label = plot_ylabel.empty() ? plot_y[0] : plot_ylabel;
      write_text(plot_out, alloy::lmc::svg_line_chart(plot_title, plot_x, y_label, series));
      write_json(plot_json, alloy::lmc::chart_json(plot_title, plot_x, y_label, series));
      return 0;
    }
    const alloy::lmc::Dataset data = alloy::lmc::load_dataset(data_dir);
    if (*train) {
      std::vector<size_t> hidden = alloy::lmc::parse_layer_list(layers);
      topt.hidden = hidden;
      topt.data_seed = data_seed_set ? data_seed : topt.seed;
      if (!classes.empty()) {
        const size_t dash = classes.find('-');
        const std::string a = classes.substr(0, dash),
                          b = dash == std::string::npos ? a : classes.substr(dash + 1);
        if (a.size() != 1 || b.size() != 1 || !isdigit(a[0]) || !isdigit(b[0]))
          throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                             "--classes '" + classes + "': expected e.g. 0-4");
        topt.first_class = size_t(a[0] - '0');
        topt.last_class = size_t(b[0] - '0');
      }
      std::unique_ptr<alloy::lmc::Mlp> start;
      if (!from.empty()) start = std::make_unique<alloy::lmc::Mlp>(alloy::lmc::load_mlp(from));
      std::vector<alloy::lmc::EpochLog> log;
      const auto t0 = Clock::now();
      const alloy::lmc::Mlp mlp =
          alloy::lmc::train_mlp(data, topt, start.get(), &log, bar.callback());
      bar.finish();
      const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      nlohmann::json doc = {{"out", train_out}, {"layer_sizes", mlp.sizes}, {"seconds", seconds}};
      nlohmann::json epochs = nlohmann::json::array();
      for (const auto& e : log) {
        epochs.push_back({{"epoch", e.epoch},
                          {"train_loss", e.train_loss},
                          {"test_loss", e.test_loss},
                          {"test_accuracy", e.test_accuracy}});
        if (train_json != "-")
          std::printf("epoch %zu: train loss %.4f, test loss %.4f, test accuracy %.2f%%\n", e.epoch,
                      e.train_loss, e.test_loss, 100 * e.test_accuracy);
      }
      doc["epochs"] = epochs;
      double train_seconds = 0, samples = 0;
      for (const auto& e : log) {
        train_seconds += e.seconds;
        samples += double(e.samples);
      }
      doc["train_seconds"] = train_seconds;
      doc["train_samples_per_second"] = train_seconds > 0 ? samples / train_seconds : 0.0;
      doc["gemm_kernel"] = alloy::lmc::matrix_kernel_name();
      doc["threads"] = alloy::thread_count();
      alloy::lmc::save_mlp(mlp, train_out, overwrite,
                           {{"alloy_lmc_train",
                             {{"epochs", topt.epochs},
                              {"seed", topt.seed},
                              {"data_seed", topt.data_seed},
                              {"lr", topt.lr},
                              {"momentum", topt.momentum},
                              {"batch", topt.batch},
                              {"from", from}}}});
      write_json(train_json, doc);
      {
        std::string csv = "epoch,train_loss,test_loss,test_accuracy\n";
        alloy::lmc::Series tl{"train loss", {}, {}, "#1f77b4", true},
            vl{"test loss", {}, {}, "#d62728", false};
        for (const auto& e : log) {
          csv += std::to_string(e.epoch) + "," + fmt(e.train_loss, 6) + "," + fmt(e.test_loss, 6) +
                 "," + fmt(e.test_accuracy, 6) + "\n";
          tl.x.push_back(double(e.epoch));
          tl.y.push_back(e.train_loss);
          vl.x.push_back(double(e.epoch));
          vl.y.push_back(e.test_loss);
        }
        const std::string svg =
            alloy::lmc::svg_line_chart("Training " + train_out, "epoch", "cross-entropy", {tl, vl});
        write_text(train_csv, csv);
        write_text(train_svg, svg);
        if (!train_report.empty()) {
          std::vector<std::pair<std::string, std::string>> rows = {
              {"layer sizes", doc["layer_sizes"].dump()}, {"seconds", fmt(seconds, 1)}};
          if (!log.empty())
            rows.push_back({"final test accuracy", fmt(100 * log.back().test_accuracy, 2) + "%"});
          write_text(train_report, alloy::lmc::html_report(
                                       "alloy-lmc train " + train_out, rows, {svg},
                                       "<h2>Log</h2><pre>" + alloy::html_escape(csv) + "</pre>"));
        }
      }
      if (train_json != "-") std::printf("wrote %s (%.1f s)\n", train_out.c_str(), seconds);
    } else if (*eval) {
      const alloy::lmc::Mlp mlp = alloy::lmc::load_mlp(eval_model);
      const auto test = alloy::lmc::evaluate(mlp, data.test),
                 tr = alloy::lmc::evaluate(mlp, data.train);
      nlohmann::json doc = {{"model", eval_model},
                            {"test", alloy::lmc::evaluation_json(test)},
                            {"train", alloy::lmc::evaluation_json(tr)}};
      doc["test"]["accuracy_classes_0_4"] = test.accuracy_on(0, 4);
      doc["test"]["accuracy_classes_5_9"] = test.accuracy_on(5, 9);
      if (eval_json != "-")
        std::printf(
            "test: loss %.6f accuracy %.2f%% (classes 0-4: %.2f%%, 5-9: %.2f%%)\ntrain: loss %.6f "
            "accuracy %.2f%%\n",
            test.loss, 100 * test.accuracy, 100 * test.accuracy_on(0, 4),
            100 * test.accuracy_on(5, 9), tr.loss, 100 * tr.accuracy);
      write_json(eval_json, doc);
      if (!eval_report.empty())
        write_text(eval_report, alloy::lmc::html_report(
                                    "alloy-lmc eval " + eval_model,
                                    {{"test loss", fmt(test.loss, 6)},
                                     {"test accuracy", fmt(100 * test.accuracy, 2) + "%"},
                                     {"train loss", fmt(tr.loss, 6)},
                                     {"train accuracy", fmt(100 * tr.accuracy, 2) + "%"}},
                                    {}, "<pre>" + alloy::html_escape(doc.dump(2)) + "</pre>"));
    } else if (*path_cmd) {
      const alloy::lmc::Mlp a = alloy::lmc::load_mlp(path_a), b = alloy::lmc::load_mlp(path_b);
      const auto path = alloy::lmc::evaluate_path(a, b, data, popt, bar.callback());
      bar.finish();
      nlohmann::json doc = alloy::lmc::path_json(path);
      doc["a"] = path_a;
      doc["b"] = path_b;
      if (path_json_out != "-") {
        std::printf("%-6s %10s %9s %10s %9s\n", "t", "test_loss", "test_acc", "train_loss",
                    "train_acc");
        for (const auto& p : path.points)
          std::printf("%-6.3f %10.4f %8.2f%% %10.4f %8.2f%%\n", p.t, p.test.loss,
                      100 * p.test.accuracy, p.train.loss, 100 * p.train.accuracy);
        std::printf(
            "loss barrier (test): %.4f   accuracy barrier (test): %.2f%%   loss barrier (train): "
            "%.4f\n",
            path.loss_barrier, 100 * path.accuracy_barrier, path.train_loss_barrier);
      }
      write_json(path_json_out, doc);
      write_text(path_csv_out, alloy::lmc::path_csv(path));
      const auto charts = path_charts({{popt.method + (popt.repair ? "+REPAIR" : ""), path}});
      write_text(path_svg_out, charts[0]);
      if (!path_report.empty())
        write_text(path_report,
                   alloy::lmc::html_report(
                       "alloy-lmc path " + path_a + " -> " + path_b,
                       {{"method", popt.method + (popt.repair ? " + REPAIR" : "")},
                        {"test loss barrier", fmt(path.loss_barrier)},
                        {"test accuracy barrier", fmt(100 * path.accuracy_barrier, 2) + "%"},
                        {"train loss barrier", fmt(path.train_loss_barrier)}},
                       charts,
                       "<h2>Points</h2><pre>" + alloy::html_escape(alloy::lmc::path_csv(path)) +
                           "</pre>"));
    } else if (*align_cmd) {
      const alloy::lmc::Mlp a = alloy::lmc::load_mlp(align_a), b = alloy::lmc::load_mlp(align_b);
      const auto method = align_method == "weight" ? alloy::lmc::AlignMethod::kWeight
                                                   : alloy::lmc::AlignMethod::kActivation;
      const auto result =
          alloy::lmc::align_models(a, b, method, &data.train, align_samples, bar.callback());
      bar.finish();
      alloy::lmc::save_mlp(
          result.aligned, align_out, overwrite,
          {{"alloy_lmc_align",
            {{"reference", align_a}, {"source", align_b}, {"method", align_method}}}},
          {align_a, align_b});
      size_t moved = 0, total = 0;
      for (const auto& p : result.perms)
        for (size_t i = 0; i < p.size(); ++i, ++total) moved += p[i] != i;
      nlohmann::json doc = alloy::lmc::perms_json(result, align_method);
      doc["a"] = align_a;
      doc["b"] = align_b;
      doc["out"] = align_out;
      if (align_json != "-")
        std::printf(
            "aligned %s to %s by %s matching (%zu passes): %zu of %zu hidden units moved; wrote "
            "%s\n",
            align_b.c_str(), align_a.c_str(), align_method.c_str(), result.passes, moved, total,
            align_out.c_str());
      write_json(align_json, doc);
      if (!align_report.empty()) {
        std::string table =
            "<h2>Hidden layers</h2><table><tr><th>layer</th><th>units</th><th>moved</th></tr>";
        for (size_t h = 0; h < result.perms.size(); ++h) {
          size_t m = 0;
          for (size_t i = 0; i < result.perms[h].size(); ++i) m += result.perms[h][i] != i;
          table += "<tr><td>" + std::to_string(h + 1) + "</td><td class=\"n\">" +
                   std::to_string(result.perms[h].size()) + "</td><td class=\"n\">" +
                   std::to_string(m) + "</td></tr>";
        }
        table += "</table>";
        write_text(align_report,
                   alloy::lmc::html_report("alloy-lmc align " + align_b + " to " + align_a,
                                           {{"method", align_method + " matching"},
                                            {"passes", std::to_string(result.passes)},
                                            {"hidden units moved", std::to_string(moved) + " of " +
                                                                       std::to_string(total)},
                                            {"output", align_out}},
                                           {}, table));
      }
    } else if (*repair_cmd) {
      const alloy::lmc::Mlp a = alloy::lmc::load_mlp(repair_a), b = alloy::lmc::load_mlp(repair_b);
      const auto plain = alloy::lmc::merge_models(a, b, repair_method, repair_t);
      const auto repaired = alloy::lmc::repair_interpolation(a, b, repair_t, data.train,
                                                             repair_samples, repair_method);
      alloy::lmc::save_mlp(
          repaired, repair_out, overwrite,
          {{"alloy_lmc_repair",
            {{"a", repair_a}, {"b", repair_b}, {"t", repair_t}, {"method", repair_method}}}},
          {repair_a, repair_b});
      const auto ea = alloy::lmc::evaluate(a, data.test), eb = alloy::lmc::evaluate(b, data.test);
      const auto ep = alloy::lmc::evaluate(plain, data.test),
                 er = alloy::lmc::evaluate(repaired, data.test);
      const double line = (1 - repair_t) * ea.loss + repair_t * eb.loss;
      nlohmann::json doc = {{"a", repair_a},
                            {"b", repair_b},
                            {"t", repair_t},
                            {"out", repair_out},
                            {"test",
                             {{"a", alloy::lmc::evaluation_json(ea)},
                              {"b", alloy::lmc::evaluation_json(eb)},
                              {"interpolated", alloy::lmc::evaluation_json(ep)},
                              {"repaired", alloy::lmc::evaluation_json(er)}}},
                            {"interpolated_loss_gap", ep.loss - line},
                            {"repaired_loss_gap", er.loss - line}};
      if (repair_json != "-")
        std::printf(
            "t = %.3f test loss: interpolated %.4f (acc %.2f%%), repaired %.4f (acc %.2f%%), "
            "endpoints' line %.4f; wrote %s\n",
            repair_t, ep.loss, 100 * ep.accuracy, er.loss, 100 * er.accuracy, line,
            repair_out.c_str());
      write_json(repair_json, doc);
      if (!repair_report.empty())
        write_text(repair_report,
                   alloy::lmc::html_report(
                       "alloy-lmc repair " + repair_a + " / " + repair_b,
                       {{"t", fmt(repair_t, 3)},
                        {"test loss, interpolated", fmt(ep.loss)},
                        {"test loss, repaired", fmt(er.loss)},
                        {"test loss, line between the endpoints", fmt(line)},
                        {"test accuracy, interpolated", fmt(100 * ep.accuracy, 2) + "%"},
                        {"test accuracy, repaired", fmt(100 * er.accuracy, 2) + "%"}},
                       {}, "<pre>" + alloy::html_escape(doc.dump(2)) + "</pre>"));
    } else if (*curve_cmd) {
      const alloy::lmc::Mlp a = alloy::lmc::load_mlp(curve_a), b = alloy::lmc::load_mlp(curve_b);
      const auto curve = alloy::lmc::train_curve(a, b, data, copt, bar.callback());
      bar.finish();
      alloy::lmc::save_mlp(
          curve.control, curve_out, overwrite,
          {{"alloy_lmc_curve",
            {{"a", curve_a}, {"b", curve_b}, {"kind", "quadratic Bezier control point"}}}},
          {curve_a, curve_b});
      nlohmann::json doc = alloy::lmc::curve_json(curve);
      doc["a"] = curve_a;
      doc["b"] = curve_b;
      doc["out"] = curve_out;
      if (curve_json_out != "-") {
        std::printf("%-6s %12s %12s\n", "t", "curve_test", "line_test");
        for (size_t i = 0; i < curve.curve.size(); ++i)
          std::printf("%-6.3f %12.4f %12.4f\n", curve.curve[i].t, curve.curve[i].test.loss,
                      curve.line.points[i].test.loss);
        std::printf("max test loss: curve %.4f, line %.4f, endpoints %.4f; wrote %s\n",
                    curve.curve_max_test_loss, curve.line_max_test_loss,
                    curve.endpoint_max_test_loss, curve_out.c_str());
      }
      write_json(curve_json_out, doc);
      write_text(curve_csv_out, alloy::lmc::curve_csv(curve));
      alloy::lmc::Series ct{"curve test", {}, {}, "#2ca02c", false},
          cr{"curve train", {}, {}, "#2ca02c", true};
      alloy::lmc::Series lt{"line test", {}, {}, "#d62728", false},
          lr{"line train", {}, {}, "#d62728", true};
      for (size_t i = 0; i < curve.curve.size(); ++i) {
        const double t = curve.curve[i].t;
        ct.x.push_back(t);
        ct.y.push_back(curve.curve[i].test.loss);
        cr.x.push_back(t);
        cr.y.push_back(curve.curve[i].train.loss);
        lt.x.push_back(t);
        lt.y.push_back(curve.line.points[i].test.loss);
        lr.x.push_back(t);
        lr.y.push_back(curve.line.points[i].train.loss);
      }
      const std::string svg = alloy::lmc::svg_line_chart(
          "Bezier curve vs straight line", "t (0 = A, 1 = B)", "cross-entropy", {ct, cr, lt, lr});
      write_text(curve_svg_out, svg);
      if (!curve_report.empty())
        write_text(curve_report,
                   alloy::lmc::html_report(
                       "alloy-lmc curve " + curve_a + " -> " + curve_b,
                       {{"max test loss on the curve", fmt(curve.curve_max_test_loss)},
                        {"max test loss on the line", fmt(curve.line_max_test_loss)},
                        {"max test loss of the endpoints", fmt(curve.endpoint_max_test_loss)}},
                       {svg},
                       "<h2>Points</h2><pre>" + alloy::html_escape(alloy::lmc::curve_csv(curve)) +
                           "</pre>"));
    }
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "\nalloy-lmc: error: %s [%s]\n", e.what(),
                 alloy::error_code_name(e.code()));
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nalloy-lmc: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
