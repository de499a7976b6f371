// The demo's stand-in when R is not installed: a tiny web app on $SHINY_PORT.
import http from 'node:http';

const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'text/html');
  res.end(`<html><head><title>Hello from procyard</title></head><body><h1>Hello from procyard</h1><p>uid ${process.getuid()}</p></body></html>\n`);
});
server.listen(Number(process.env.SHINY_PORT), process.env.SHINY_HOST, () =>
  console.log(`node app listening on ${process.env.SHINY_HOST}:${process.env.SHINY_PORT} as uid ${process.getuid()}`),
);
process.on('SIGTERM', () => {
  console.log('SIGTERM: closing the server');
  server.close(() => process.exit(0));
});
