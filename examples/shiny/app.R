# A small Shiny app for the procyard demo. procyard runs it as
# `Rscript <workerMount>/app.R` and tells it where to listen.
library(shiny)

ui <- fluidPage(
  titlePanel("Hello from procyard"),
  sliderInput("n", "Sample size", min = 10, max = 1000, value = 200),
  plotOutput("hist")
)

server <- function(input, output, session) {
  output$hist <- renderPlot(hist(rnorm(input$n), main = "rnorm", col = "steelblue"))
}

port <- as.integer(Sys.getenv("SHINY_PORT", "3838"))
host <- Sys.getenv("SHINY_HOST", "127.0.0.1")
# shiny reads SHINY_PORT as a sign of Shiny Server and warns about its version.
Sys.unsetenv("SHINY_PORT")
message("app.R: R ", getRversion(), " as uid ", system("id -u", intern = TRUE))
runApp(shinyApp(ui, server), port = port, host = host, launch.browser = FALSE)
