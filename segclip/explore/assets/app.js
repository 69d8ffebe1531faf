// segclip explorer: a single-page app over data shards loaded as <script> files (fetch() is blocked on file://).
// Every data file calls segclipExplorer.register(name, data); routes are #/pair/N/H, #/neuron/N, #/head/H,
// #/search/WORD, #/about and #/ (the units with the largest contributions).
(function () {
  "use strict";

  var shards = {};
  var waiting = {};
  var site = null;

  window.segclipExplorer = {
    register: function (name, data) {
      shards[name] = data;
      var callbacks = waiting[name] || [];
      delete waiting[name];
      callbacks.forEach(function (cb) { cb[0](data); });
      if (name === "site") { site = data; start(); }
    }
  };

  function load(name) {
    if (shards[name]) { return Promise.resolve(shards[name]); }
    return new Promise(function (resolve, reject) {
      if (waiting[name]) { waiting[name].push([resolve, reject]); return; }
      waiting[name] = [[resolve, reject]];
      var script = document.createElement("script");
      script.src = "data/" + name + ".js";
      script.onerror = function () {
        var callbacks = waiting[name] || [];
        delete waiting[name];
        callbacks.forEach(function (cb) { cb[1](new Error("cannot load data/" + name + ".js")); });
      };
      document.head.appendChild(script);
    });
  }

  // el("a", {href: "#/"}, "text", child, ...): text children are set as text, never parsed as HTML.
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (attrs[key] !== null && attrs[key] !== undefined) { node.setAttribute(key, attrs[key]); }
    });
    function append(child) {
      if (child === null || child === undefined) { return; }
      if (Array.isArray(child)) { child.forEach(append); return; }
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    for (var i = 2; i < arguments.length; i++) { append(arguments[i]); }
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) { return "-"; }
    var d = digits === undefined ? 3 : digits;
    var a = Math.abs(value);
    return (a !== 0 && (a < Math.pow(10, -d) || a >= 1e5)) ? value.toExponential(2) : value.toFixed(d);
  }

  function signed(value) { return (value >= 0 ? "+" : "") + fmt(value); }
  function pairLink(n, h) { return el("a", {href: "#/pair/" + n + "/" + h, "class": "pair-link"}, "pair " + n + ":" + h); }
  function neuronLink(n) { return el("a", {href: "#/neuron/" + n, "class": "neuron-link"}, "neuron " + n); }
  function headLink(h) { return el("a", {href: "#/head/" + h, "class": "head-link"}, "head " + h); }
  function shardOf(n) { return "neurons/" + Math.floor(n / site.neurons_per_shard); }

  function wordList(words, percent) {
    if (!words || !words.length) {
      return el("p", {"class": "muted"}, site.labelled ? "no words for this unit" :
        "no words: build the site with --labels (the output of segclip analyze label)");
    }
    return el("ol", {"class": "words"}, words.map(function (w) {
      return el("li", {}, el("a", {href: "#/search/" + encodeURIComponent(w[0]), "class": "word"}, w[0]), " ",
        el("span", {"class": w[1] >= 0 ? "pos" : "neg"}, percent ? fmt(w[1], 1) + "%" : signed(w[1])));
    }));
  }

  function shortWords(words) {
    return (words || []).map(function (w) { return w[0] + " (" + signed(w[1]) + ")"; }).join(", ");
  }

  function decode(map) {
    var raw = atob(map.m);
    var out = new Float32Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      var q = raw.charCodeAt(i);
      out[i] = (q > 127 ? q - 256 : q) * map.s / 127;
    }
    return out;
  }

  // A map on the model's token grid (row-major, token 1 top-left), drawn over the thumbnail: red where the
  // value is positive, blue where negative, opacity proportional to |value| / max |value|.
  function overlay(map) {
    var grid = site.grid;
    var canvas = el("canvas", {"class": "overlay", width: grid, height: grid});
    var ctx = canvas.getContext("2d");
    var values = decode(map);
    var max = 0;
    values.forEach(function (v) { max = Math.max(max, Math.abs(v)); });
    for (var i = 0; i < values.length; i++) {
      var v = max > 0 ? values[i] / max : 0;
      ctx.fillStyle = "rgba(" + (v >= 0 ? "255,40,0," : "0,90,255,") + (0.8 * Math.abs(v)).toFixed(3) + ")";
      ctx.fillRect(i % grid, Math.floor(i / grid), 1, 1);
    }
    return canvas;
  }

  function gallery(items, caption) {
    return el("div", {"class": "gallery"}, items.map(function (item) {
      return el("figure", {"class": "thumb-figure"},
        el("div", {"class": "thumb"}, el("img", {src: "thumbs/" + item.i + ".jpg", alt: "image " + item.i}),
          overlay(item)),
        el("figcaption", {}, caption(item)));
    }));
  }

  function table(header, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, header.map(function (h) { return el("th", {}, h); }))),
      el("tbody", {}, rows.map(function (row) {
        return el("tr", {"class": row.className || null}, row.cells.map(function (c) { return el("td", {}, c); }));
      })));
  }

  function facts(entries) {
    return el("dl", {"class": "facts"}, entries.map(function (e) { return [el("dt", {}, e[0]), el("dd", {}, e[1])]; }));
  }

  function histogram(page) {
    var edges = page.histogram.edges, counts = page.histogram.counts;
    var lo = Math.min(edges[0], page.mean - page.std), hi = Math.max(edges[edges.length - 1], page.mean + page.std);
    if (hi <= lo) { hi = lo + 1; }
    var width = 360, height = 120, top = Math.max.apply(null, counts.concat([1]));
    var x = function (v) { return 10 + (width - 20) * (v - lo) / (hi - lo); };
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + (height + 24));
    svg.setAttribute("class", "histogram");
    function add(tag, attrs, text) {
      var node = document.createElementNS(ns, tag);
      Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
      if (text) { node.textContent = text; }
      svg.appendChild(node);
    }
    counts.forEach(function (c, i) {
      var h = (height - 10) * c / top;
      add("rect", {x: x(edges[i]), y: height - h, width: Math.max(1, x(edges[i + 1]) - x(edges[i]) - 1), height: h,
        "class": "bar"});
    });
    add("line", {x1: x(page.mean), x2: x(page.mean), y1: 0, y2: height, "class": "mean"});
    [page.mean - page.std, page.mean + page.std].forEach(function (v) {
      add("line", {x1: x(v), x2: x(v), y1: 0, y2: height, "class": "std"});
    });
    add("text", {x: 10, y: height + 16}, fmt(lo));
    add("text", {x: width - 10, y: height + 16, "text-anchor": "end"}, fmt(hi));
    return el("figure", {"class": "histogram-figure"}, svg, el("figcaption", {},
      "alpha over the " + page.tail + " images of largest |alpha - mean| (of " + site.about.image_count +
      "); solid line: mean, dashed: mean +- standard deviation, both over all images"));
  }

  function notFound(text) { return el("div", {"class": "missing"}, el("h1", {}, "Not here"), el("p", {}, text)); }

  function renderLanding() {
    var heads = site.head_pages.map(function (p, h) { return [h, p]; })
      .sort(function (a, b) { return b[1].norm - a[1].norm; });
    return el("div", {},
      el("h1", {}, "Units with the largest contributions"),
      el("p", {"class": "muted"}, "Contribution: the mean of a unit's top " + site.about.norm_k +
        " contribution norms over " + site.about.image_count + " images. " + site.pairs_kept + " of " +
        site.neurons * site.heads + " pairs have a page (contribution >= " + fmt(site.threshold) + ")."),
      el("h2", {}, "Pairs"),
      table(["pair", "contribution", "words"], site.landing.pairs.map(function (p) {
        return {cells: [pairLink(p[0], p[1]), fmt(p[2]), shortWords(p[3])]};
      })),
      el("h2", {}, "Neurons"),
      table(["neuron", "contribution", "words"], site.landing.neurons.map(function (p) {
        return {cells: [neuronLink(p[0]), fmt(p[1]), shortWords(p[2])]};
      })),
      el("h2", {}, "Heads"),
      table(["head", "contribution", "sink attention", "words"], heads.map(function (e) {
        return {cells: [headLink(e[0]), fmt(e[1].norm), fmt(e[1].sink), shortWords(e[1].words.slice(0, 3))]};
      })));
  }

  function renderPair(n, h) {
    return load(shardOf(n)).then(function (shard) {
      var neuron = shard.neurons[n];
      if (!neuron) { return notFound("There is no neuron " + n + " (the model has " + site.neurons + ")."); }
      var page = neuron.pairs[h];
      if (!page) {
        var entry = neuron.heads.filter(function (e) { return e[0] === h; })[0];
        return notFound(entry ? "Pair " + n + ":" + h + " has contribution " + fmt(entry[1]) +
          ", below the threshold " + fmt(site.threshold) + " of this site; see " + "its neuron." :
          "There is no head " + h + " (the model has " + site.heads + ").");
      }
      return el("div", {"class": "pair-page"},
        el("h1", {}, "pair " + n + ":" + h),
        el("p", {}, neuronLink(n), " through ", headLink(h)),
        facts([["contribution", fmt(page.norm)], ["|w[n, h]|", fmt(page.w_norm)], ["sign s", String(page.sign)],
          ["mean alpha", fmt(page.mean)], ["std alpha", fmt(page.std)],
          ["positive deviations", fmt(100 * page.positive, 0) + "% of the top " + page.tail]]),
        el("h2", {}, "Words (OMP of s w / |w|)"), wordList(page.words),
        el("h2", {}, "Top images, with the share a^h_i z'_i[n] of each token"),
        gallery(page.top, function (item) {
          return "#" + item.i + " alpha " + fmt(item.a) + " (class token " + signed(item.c) + ")";
        }),
        el("h2", {}, "Scalar alpha[n, h]"), histogram(page),
        el("h2", {}, "Sibling pairs of neuron " + n + ", by contribution"),
        table(["pair", "contribution"], neuron.heads.map(function (e) {
          return {className: e[0] === h ? "current" : (e[2] ? null : "omitted"),
            cells: [e[2] ? pairLink(n, e[0]) : "pair " + n + ":" + e[0] + " (below threshold)", fmt(e[1])]};
        })));
    });
  }

  function renderNeuron(n) {
    return load(shardOf(n)).then(function (shard) {
      var neuron = shard.neurons[n];
      if (!neuron) { return notFound("There is no neuron " + n + " (the model has " + site.neurons + ")."); }
      var sub = neuron.subconcepts || [];
      return el("div", {"class": "neuron-page"},
        el("h1", {}, "neuron " + n),
        facts([["contribution", fmt(neuron.norm)],
          ["register neuron", neuron.register ? "yes (sink change " + fmt(neuron.register_score) + ")" :
            "no (sink change " + fmt(neuron.register_score) + ")"]]),
        el("h2", {}, "Words (OMP of its first principal component)"), wordList(neuron.words),
        el("h2", {}, "Sub-concepts"),
        sub.length ? table(["pair", "words (centroid difference)", "score", "overlap", "response", "distance"],
          sub.map(function (s) {
            return {className: "subconcept", cells: [pairLink(n, s.head), shortWords(s.words), fmt(s.score),
              fmt(s.overlap, 2), fmt(s.response, 2), fmt(s.distance)]};
          })) : el("p", {"class": "muted"}, "none found (or the site was built without --subconcepts)"),
        el("h2", {}, "Top images, with the activation map x[n]"),
        gallery(neuron.top, function (item) { return "#" + item.i; }),
        el("h2", {}, "Heads, by contribution of the pair"),
        table(["pair", "contribution", "share"], neuron.heads.map(function (e) {
          var total = neuron.heads.reduce(function (s, x) { return s + x[1]; }, 0);
          return {className: e[2] ? null : "omitted",
            cells: [e[2] ? pairLink(n, e[0]) : "pair " + n + ":" + e[0] + " (below threshold)", fmt(e[1]),
              fmt(100 * e[1] / (total || 1), 1) + "%"]};
        })));
    });
  }

  function renderHead(h) {
    var page = site.head_pages[h];
    if (!page) { return notFound("There is no head " + h + " (the model has " + site.heads + ")."); }
    return el("div", {"class": "head-page"},
      el("h1", {}, "head " + h),
      facts([["contribution", fmt(page.norm)],
        ["sink attention", fmt(page.sink) + " (class token to the last token; uniform " +
          fmt(site.uniform_attention) + ")"]]),
      el("h2", {}, site.head_kind === "textspan" ? "Words (TextSpan, share of the head's variance)" :
        "Words (OMP of its first principal component)"),
      wordList(page.words, site.head_kind === "textspan"),
      el("h2", {}, "Register neurons (flagged by their change of the sink attention)"),
      site.registers.length ? el("p", {"class": "registers"}, site.registers.map(function (r, i) {
        return [i ? ", " : "", neuronLink(r)];
      })) : el("p", {"class": "muted"}, "none flagged"),
      el("h2", {}, "Top images, with the class-token attention a^h_i"),
      gallery(page.top, function (item) { return "#" + item.i + " (class token " + fmt(item.c) + ")"; }),
      el("h2", {}, "Pairs through this head, by contribution"),
      table(["pair", "contribution"], page.pairs.map(function (p) {
        return {cells: [pairLink(p[0], h), fmt(p[1])]};
      })));
  }

  function renderSearch(word) {
    return load("search").then(function (index) {
      var wanted = word.trim().toLowerCase();
      var at = index.words.map(function (w) { return w.toLowerCase(); }).indexOf(wanted);
      if (at < 0) {
        var close = index.words.filter(function (w) { return w.toLowerCase().indexOf(wanted) >= 0; }).slice(0, 30);
        return el("div", {"class": "search-page"}, el("h1", {}, "search: " + word),
          el("p", {}, "'" + word + "' is not among the " + index.words.length + " precomputed search words."),
          close.length ? el("p", {}, "Close: ", close.map(function (w, i) {
            return [i ? ", " : "", el("a", {href: "#/search/" + encodeURIComponent(w)}, w)];
          })) : null);
      }
      var found = index.results[at];
      return el("div", {"class": "search-page"},
        el("h1", {}, "search: " + index.words[at]),
        el("p", {"class": "muted"}, "Units ranked by the cosine of their direction with the text embedding of '" +
          index.words[at] + "' (pairs: s w / |w|; neurons and heads: their first principal component)."),
        el("h2", {}, "Pairs"), table(["pair", "cosine"], found.pairs.map(function (p) {
          return {className: "result", cells: [pairLink(p[0], p[1]), fmt(p[2])]};
        })),
        el("h2", {}, "Neurons"), table(["neuron", "cosine"], found.neurons.map(function (p) {
          return {className: "result", cells: [neuronLink(p[0]), fmt(p[1])]};
        })),
        el("h2", {}, "Heads"), table(["head", "cosine"], found.heads.map(function (p) {
          return {className: "result", cells: [headLink(p[0]), fmt(p[1])]};
        })));
    });
  }

  function renderAbout() {
    var a = site.about, m = a.model;
    return el("div", {"class": "about-page"},
      el("h1", {}, "About this site"),
      el("p", {}, "CLIP-ResNet's image embedding is exactly a sum over neuron-head pairs: each neuron n of the last " +
        "conv block, through each head h of the attention pool, adds alpha[n, h] w[n, h], a scalar per image " +
        "(alpha = sum_i a^h_i z'_i[n]) times a fixed direction. A pair page shows where in its top images alpha " +
        "comes from (the share a^h_i z'_i[n] of each grid token), its words, its statistics and its siblings; a " +
        "neuron page its heads ranked and its sub-concepts; a head page its words, its attention to the sink token " +
        "and the register neurons."),
      facts([["model", m.name + " (" + m.neurons + " neurons, " + m.heads + " heads, " + m.grid + "x" + m.grid +
          " grid, d = " + m.embed_dim + ")"],
        ["weights", m.pretrained + " (" + m.weights_hash + ")"],
        ["data", a.image_count + " images in " + a.images + " (statistics " + a.statistics + ", top " + a.top_k +
          " per pair)"],
        ["labels", a.labels || "none"], ["sub-concepts", a.subconcepts || "none"],
        ["pairs with a page", site.pairs_kept + " of " + site.neurons * site.heads + " (the top " +
          fmt(100 * site.keep_pairs, 0) + "%: contribution >= " + fmt(site.threshold) + ")"],
        ["images traced", a.images_traced + " (each once; one shared thumbnail each)"],
        ["search words", String(a.search_words)],
        ["built by", el("code", {"class": "command"}, a.command)],
        ["built", a.built + (a.git_revision ? ", segclip git " + a.git_revision : "")],
        ["versions", Object.keys(a.versions).map(function (k) { return k + " " + a.versions[k]; }).join(", ")]]),
      el("h2", {}, "Reading the maps"),
      el("p", {}, "Overlays are drawn on the model's token grid over the same centre crop the model saw: red where " +
        "the value is positive, blue where negative, opacity proportional to |value| relative to the map's largest. " +
        "The histogram of a pair's scalar shows the exact tail the statistics keep (the images of largest " +
        "|alpha - mean|), not the whole distribution, with the mean and standard deviation over all images."));
  }

  function render() {
    var begun = performance.now();
    var hash = location.hash.replace(/^#\/?/, "");
    var parts = hash.split("/");
    var view = document.getElementById("view");
    var page;
    var number = function (s) { return /^\d+$/.test(s || "") ? parseInt(s, 10) : NaN; };
    document.body.removeAttribute("data-rendered");
    try {
      if (parts[0] === "pair" && !isNaN(number(parts[1])) && !isNaN(number(parts[2]))) {
        page = renderPair(number(parts[1]), number(parts[2]));
      } else if (parts[0] === "neuron" && !isNaN(number(parts[1]))) { page = renderNeuron(number(parts[1])); }
      else if (parts[0] === "head" && !isNaN(number(parts[1]))) { page = renderHead(number(parts[1])); }
      else if (parts[0] === "search" && parts.length > 1) {
        page = renderSearch(decodeURIComponent(parts.slice(1).join("/")));
      } else if (parts[0] === "about") { page = renderAbout(); }
      else if (hash === "") { page = renderLanding(); }
      else { page = notFound("Unknown link #" + hash + "; links look like #/pair/624/21, #/neuron/624, " +
        "#/head/21, #/search/butterfly."); }
    } catch (err) { page = Promise.reject(err); }
    Promise.resolve(page).then(function (node) {
      view.replaceChildren(node);
      window.scrollTo(0, 0);
    }, function (err) {
      view.replaceChildren(notFound(String(err && err.message || err)));
    }).then(function () {
      document.body.setAttribute("data-render-ms", (performance.now() - begun).toFixed(1));
      document.body.setAttribute("data-rendered", "#/" + hash);
    });
  }

  function start() {
    var m = site.about.model;
    document.getElementById("model").textContent = m.name + " · " + site.about.image_count + " images";
    document.getElementById("search-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var word = document.getElementById("search-input").value.trim();
      if (word) { location.hash = "#/search/" + encodeURIComponent(word); }
    });
    window.addEventListener("hashchange", render);
    if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", render); }
    else { render(); }
  }
}());
