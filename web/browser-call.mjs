// A caller in a real browser, for tests/browser.rs: Debian's Chromium, headless, driven by
// playwright-core, with a fake microphone that plays a WAV (looped by Chromium). Opens the caller
// page, presses "start", takes a screenshot mid-call, presses "hang up" after `seconds`, waits
// for the final anketa, takes a second screenshot. Prints one JSON event per line on stdout:
// the page's CONSULTANT_EVENT lines, plus the driver's own.
//
//   node browser-call.mjs URL WAV OUT_DIR SECONDS

import { chromium } from "playwright-core";

const [url, wav, outDir, seconds] = process.argv.slice(2);
if (!url || !wav || !outDir || !seconds) {
  console.error("usage: node browser-call.mjs URL WAV OUT_DIR SECONDS");
  process.exit(2);
}
const say = (event, data) => console.log(JSON.stringify({ event, t: Date.now() / 1000, ...data }));
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${wav}`,
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
  ],
});
try {
  const page = await browser.newPage();
  let finalAnketa = false;
  page.on("console", (m) => {
    const text = m.text();
    if (text.startsWith("CONSULTANT_EVENT ")) {
      const line = text.slice("CONSULTANT_EVENT ".length);
      if (line.includes('"event":"final_anketa"')) finalAnketa = true;
      console.log(line);
    } else if (m.type() === "error") {
      say("console_error", { text });
    }
  });
  page.on("pageerror", (e) => say("page_error", { message: String(e) }));
  await page.goto(url);
  await page.click("#start");
  say("started", {});
  const total = Number(seconds) * 1000;
  await sleep(total / 2);
  await page.screenshot({ path: `${outDir}/mid-call.png`, fullPage: true });
  say("screenshot", { path: `${outDir}/mid-call.png` });
  await sleep(total / 2);
  await page.click("#hangup");
  say("hung_up", {});
  for (let i = 0; i < 60 && !finalAnketa; i++) await sleep(500);
  await page.screenshot({ path: `${outDir}/end.png`, fullPage: true });
  say("screenshot", { path: `${outDir}/end.png` });
} finally {
  await browser.close();
}
say("done", {});
