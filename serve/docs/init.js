// Swagger UI for this service's own document. "openapi.json" is relative to the page, so the page
// works on any host and port and behind a proxy under any path prefix. validatorUrl null: the page
// never calls swagger.io (or anything but this service).
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
});
