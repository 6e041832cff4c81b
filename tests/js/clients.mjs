// Drive the router with clients nobody on this project wrote: ollama-js and openai-node.
// Usage: node clients.mjs <ollama|openai> <router URL> <model> [embedding model]
// Runs a fixed battery of calls and prints one JSON object: each step's result, or
// {"error": ...} for a step that threw (tests/test_js_clients.py reads it).
import { Ollama } from "ollama";
import OpenAI from "openai";

const [kind, url, model, embedModel] = process.argv.slice(2);
const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
const USER = [{ role: "user", content: "say hello" }];
const WEATHER = {
  type: "function",
  function: {
    name: "weather", description: "the weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const SCHEMA = { type: "object", properties: { name: { type: "string" }, age: { type: "integer" } } };

function counts(part) {
  return { prompt_eval_count: part.prompt_eval_count ?? null, eval_count: part.eval_count ?? null,
           done: part.done ?? null, done_reason: part.done_reason ?? null };
}

async function collect(stream, text) {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return { text: parts.map(text).join(""), lines: parts.length, last: parts[parts.length - 1] };
}

const ollamaSteps = (client) => ({
  chat_whole: async () => {
    const r = await client.chat({ model, messages: USER });
    return { content: r.message.content, role: r.message.role, ...counts(r) };
  },
  chat_stream: async () => {
    const parts = [];
    for await (const part of await client.chat({ model, messages: USER, stream: true })) parts.push(part);
    const last = parts[parts.length - 1];
    return { content: parts.map((p) => p.message.content).join(""),
             roles: [...new Set(parts.map((p) => p.message.role))], ...counts(last) };
  },
  generate_stream: async () => {
    const got = await collect(await client.generate({ model, prompt: "say hello", stream: true }), (p) => p.response);
    return { response: got.text, context: (got.last.context ?? []).length, ...counts(got.last) };
  },
  tools: async () => {
    const r = await client.chat({ model, messages: USER, tools: [WEATHER] });
    return (r.message.tool_calls ?? []).map((c) => ({ name: c.function.name, arguments: c.function.arguments }));
  },
  format: async () => JSON.parse((await client.chat({ model, messages: USER, format: SCHEMA })).message.content),
  think: async () => {
    const r = await client.chat({ model, messages: USER, think: true });
    return { thinking: r.message.thinking ?? null, content: r.message.content };
  },
  images: async () => (await client.chat({ model, messages: [{ ...USER[0], images: [PNG] }] })).message.content,
  embed: async () => {
    const r = await client.embed({ model: embedModel ?? model, input: ["a", "bb"] });
    return { count: r.embeddings.length, dims: r.embeddings[0].length,
             norm: Math.sqrt(r.embeddings[0].reduce((s, v) => s + v * v, 0)) };
  },
  list: async () => (await client.list()).models.map((m) => m.model),
  show: async () => (await client.show({ model })).capabilities ?? null,
});

const openaiSteps = (client) => ({
  chat_whole: async () => {
    const r = await client.chat.completions.create({ model, messages: USER });
    return { content: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason, usage: r.usage ?? null };
  },
  chat_stream: async () => {
    const stream = await client.chat.completions.create({ model, messages: USER, stream: true,
                                                          stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const usage = chunks.filter((c) => c.usage).map((c) => c.usage);
    return { content: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
             finish_reason: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean)[0] ?? null,
             usage: usage.length ? usage[usage.length - 1] : null };
  },
  tools: async () => {
    const r = await client.chat.completions.create({ model, messages: USER, tools: [WEATHER] });
    return (r.choices[0].message.tool_calls ?? []).map((c) => ({ name: c.function.name,
                                                                 arguments: JSON.parse(c.function.arguments) }));
  },
  embed: async () => {  // openai-node asks for base64 by default and decodes it itself
    const r = await client.embeddings.create({ model: embedModel ?? model, input: ["a", "bb"] });
    return { count: r.data.length, dims: r.data[0].embedding.length };
  },
  list: async () => (await client.models.list()).data.map((m) => m.id),
  retrieve: async () => (await client.models.retrieve(model)).id,
});

const steps = kind === "ollama"
  ? ollamaSteps(new Ollama({ host: url }))
  : openaiSteps(new OpenAI({ baseURL: `${url}/v1`, apiKey: "any", maxRetries: 0 }));
const results = {};
for (const [name, step] of Object.entries(steps)) {
  try {
    results[name] = await step();
  } catch (err) {
    results[name] = { error: String(err?.error ?? err?.message ?? err), status: err?.status_code ?? err?.status ?? null };
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
